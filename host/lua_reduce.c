/* lua_reduce.c — placeholder until the reduce bindings land. */
#include "lua_tensor.h"
void sere_lua_open_reduce(lua_State *L) { (void)L; }
