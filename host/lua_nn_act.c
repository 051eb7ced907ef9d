/* lua_nn_act.c — placeholder until the act ops land (issue 3). */
#include "lua_tensor.h"
void sere_lua_open_nn_act(lua_State *L) { (void)L; }
