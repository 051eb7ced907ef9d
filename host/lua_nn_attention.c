/* lua_nn_attention.c — placeholder until the attention ops land (issue 3). */
#include "lua_tensor.h"
void sere_lua_open_nn_attention(lua_State *L) { (void)L; }
