/* lua_io.c — placeholder until the io bindings land. */
#include "lua_tensor.h"
void sere_lua_open_io(lua_State *L) { (void)L; }
