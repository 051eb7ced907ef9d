/* lua_nn_norm.c — placeholder until the norm ops land (issue 3). */
#include "lua_tensor.h"
void sere_lua_open_nn_norm(lua_State *L) { (void)L; }
