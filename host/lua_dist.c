/* lua_dist.c — the Lua surface of dist.c, the module "sere.dist_core":
 * rank, world_size, local_rank, is_distributed, cuda_transport, barrier
 * and the collectives on CPU and CUDA tensors. lua/sere/dist.lua re-exports these as
 * sere.dist and adds the training helpers. Ranks are 0-based (as
 * torch.distributed's and data.Loader's). */
#include <limits.h>
#include <string.h>

#include "dist.h"
#include "lua_dist.h"
#include "lua_tensor.h"

static int l_rank(lua_State *L) { lua_pushinteger(L, sere_dist_rank()); return 1; }
static int l_world_size(lua_State *L) { lua_pushinteger(L, sere_dist_world_size()); return 1; }
static int l_local_rank(lua_State *L) { lua_pushinteger(L, sere_dist_local_rank()); return 1; }
static int l_is_distributed(lua_State *L) { lua_pushboolean(L, sere_dist_is_distributed()); return 1; }
static int l_cuda_transport(lua_State *L) { lua_pushstring(L, sere_dist_cuda_transport()); return 1; }

static int l_barrier(lua_State *L) {
  if (sere_dist_barrier()) return sere_lua_raise(L);
  return 0;
}

/* dist.all_reduce(t[, op = "sum"]) -> t, reduced in place */
static int l_all_reduce(lua_State *L) {
  static const char *const names[] = {"sum", "avg", "max", NULL};
  sere_tensor *t = sere_lua_check(L, 1, "dist.all_reduce");
  const char *op = luaL_optstring(L, 2, "sum");
  int which = -1;
  for (int i = 0; names[i]; i++)
    if (!strcmp(op, names[i])) which = i;
  if (which < 0) return luaL_error(L, "dist.all_reduce: unknown op \"%s\" (expected \"sum\", \"avg\" or \"max\")", op);
  if (sere_dist_all_reduce(t, (sere_dist_op)which)) return sere_lua_raise(L);
  lua_settop(L, 1);
  return 1;
}

/* dist.all_gather(t) -> every rank's t concatenated along dim 1 */
static int l_all_gather(lua_State *L) {
  return sere_lua_push(L, sere_dist_all_gather(sere_lua_check(L, 1, "dist.all_gather")));
}

/* dist.broadcast(t[, root = 0]) -> t, holding root's values */
static int l_broadcast(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "dist.broadcast");
  lua_Integer root = luaL_optinteger(L, 2, 0);
  if (root < 0 || root > INT_MAX)
    return luaL_error(L, "dist.broadcast: root %I is not a rank (ranks are 0 .. %d)", root, sere_dist_world_size() - 1);
  if (sere_dist_broadcast(t, (int)root)) return sere_lua_raise(L);
  lua_settop(L, 1);
  return 1;
}

int luaopen_sere_dist_core(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"rank", l_rank}, {"world_size", l_world_size}, {"local_rank", l_local_rank},
      {"is_distributed", l_is_distributed}, {"cuda_transport", l_cuda_transport}, {"barrier", l_barrier},
      {"all_reduce", l_all_reduce}, {"all_gather", l_all_gather}, {"broadcast", l_broadcast}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
