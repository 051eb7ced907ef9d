/* lua_cuda.c — sere.cuda: is_available, device_count, device_name,
 * mem_info, synchronize. In a build without CUDA every query says "no GPU"
 * and the functions that need one raise a clear error. */
#include <lauxlib.h>

#include "lua_tensor.h"
#ifdef SERE_WITH_CUDA
#include "cuda_device.h"
#endif

static int device_count(void) {
#ifdef SERE_WITH_CUDA
  return sere_cuda_device_count();
#else
  return 0;
#endif
}

static int need_device(lua_State *L, int idx) {
  int n = device_count();
  if (n == 0) {
#ifdef SERE_WITH_CUDA
    luaL_error(L, "cuda: no CUDA device is available on this machine");
#else
    luaL_error(L, "cuda: this sere was built without CUDA (configure with nvcc present or -DSERE_CUDA=ON)");
#endif
  }
  lua_Integer d = luaL_optinteger(L, idx, 1);
  if (d < 1 || d > n) luaL_error(L, "cuda: device %d out of range (1..%d)", (int)d, n);
  return (int)d - 1;
}

static int c_is_available(lua_State *L) { lua_pushboolean(L, device_count() > 0); return 1; }
static int c_device_count(lua_State *L) { lua_pushinteger(L, device_count()); return 1; }
static int c_compiled(lua_State *L) {
#ifdef SERE_WITH_CUDA
  lua_pushboolean(L, 1);
#else
  lua_pushboolean(L, 0);
#endif
  return 1;
}

static int c_device_name(lua_State *L) {
  int d = need_device(L, 1);
#ifdef SERE_WITH_CUDA
  char name[256], err[256];
  if (sere_cuda_device_name(d, name, sizeof name, err, sizeof err)) return luaL_error(L, "cuda: %s", err);
  lua_pushstring(L, name);
  return 1;
#else
  (void)d;
  return 0;
#endif
}

static int c_mem_info(lua_State *L) {
  int d = need_device(L, 1);
#ifdef SERE_WITH_CUDA
  size_t free_b, total_b;
  char err[256];
  if (sere_cuda_mem_info(d, &free_b, &total_b, err, sizeof err)) return luaL_error(L, "cuda: %s", err);
  lua_pushinteger(L, (lua_Integer)free_b);
  lua_pushinteger(L, (lua_Integer)total_b);
  return 2;
#else
  (void)d;
  return 0;
#endif
}

static int c_synchronize(lua_State *L) {
  need_device(L, 1);
#ifdef SERE_WITH_CUDA
  char err[256];
  if (sere_cuda_synchronize(err, sizeof err)) return luaL_error(L, "cuda: %s", err);
#endif
  return 0;
}

void sere_lua_open_cuda(lua_State *L) {
  static const luaL_Reg functions[] = {
      {"cuda_is_available", c_is_available}, {"cuda_device_count", c_device_count},
      {"cuda_compiled", c_compiled},         {"cuda_device_name", c_device_name},
      {"cuda_mem_info", c_mem_info},         {"cuda_synchronize", c_synchronize},
      {NULL, NULL}};
  sere_lua_register(L, NULL, functions);
}
