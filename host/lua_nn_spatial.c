/* lua_nn_spatial.c — placeholder until the spatial ops land (issue 3). */
#include "lua_tensor.h"
void sere_lua_open_nn_spatial(lua_State *L) { (void)L; }
