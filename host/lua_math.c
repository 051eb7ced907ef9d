/* lua_math.c — placeholder until the math bindings land. */
#include "lua_tensor.h"
void sere_lua_open_math(lua_State *L) { (void)L; }
