/* lua_nn_loss.c — placeholder until the loss ops land (issue 3). */
#include "lua_tensor.h"
void sere_lua_open_nn_loss(lua_State *L) { (void)L; }
