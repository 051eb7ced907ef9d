/* lua_index.c — placeholder until the index bindings land. */
#include "lua_tensor.h"
void sere_lua_open_index(lua_State *L) { (void)L; }
