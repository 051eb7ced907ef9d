/* lua_cuda.c — sere.cuda: is_available, device_count, device_name,
 * mem_info, set_device, synchronize, and the caching allocator's
 * memory_stats / reset_peak_memory_stats / empty_cache / set_poison. In a
 * build without CUDA every query says "no GPU" and the functions that need
 * one raise a clear error. */
#include <lauxlib.h>
#include <stdint.h>

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

/* Raises unless a GPU is usable; returns the 0-based device at idx (Lua
 * 1-based, default 1). */
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
static int c_emulated(lua_State *L) {
#ifdef SERE_CUDA_EMULATED
  lua_pushboolean(L, 1);
#else
  lua_pushboolean(L, 0);
#endif
  return 1;
}

#ifdef SERE_CUDA_EMULATED
uint64_t sere_emu_launch_count(void); /* kernels/emulator: kernels launched so far */
/* Emulator builds only: lets the parity tests see that an op ran kernels. */
static int c_launch_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sere_emu_launch_count());
  return 1;
}
#endif

#ifdef SERE_WITH_CUDA
static int c_device_name(lua_State *L) {
  int d = need_device(L, 1);
  char name[256], err[256];
  if (sere_cuda_device_name(d, name, sizeof name, err, sizeof err)) return luaL_error(L, "cuda: %s", err);
  lua_pushstring(L, name);
  return 1;
}

static int c_mem_info(lua_State *L) {
  int d = need_device(L, 1);
  size_t free_b, total_b;
  char err[256];
  if (sere_cuda_mem_info(d, &free_b, &total_b, err, sizeof err)) return luaL_error(L, "cuda: %s", err);
  lua_pushinteger(L, (lua_Integer)free_b);
  lua_pushinteger(L, (lua_Integer)total_b);
  return 2;
}

static int c_set_device(lua_State *L) {
  int d = need_device(L, 1);
  if (sere_cuda_set_device(d)) return sere_lua_raise(L);
  return 0;
}

static int c_synchronize(lua_State *L) {
  need_device(L, 1);
  char err[256];
  if (sere_cuda_synchronize(err, sizeof err)) return luaL_error(L, "cuda: %s", err);
  return 0;
}

static void set_field(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

/* {allocated, reserved, peak_allocated, device_mallocs, device_frees} in bytes / calls. */
static int c_memory_stats(lua_State *L) {
  sere_cuda_memory m;
  sere_cuda_memory_stats(&m);
  lua_createtable(L, 0, 5);
  set_field(L, "allocated", (lua_Integer)m.allocated);
  set_field(L, "reserved", (lua_Integer)m.reserved);
  set_field(L, "peak_allocated", (lua_Integer)m.peak_allocated);
  set_field(L, "device_mallocs", (lua_Integer)m.device_mallocs);
  set_field(L, "device_frees", (lua_Integer)m.device_frees);
  return 1;
}
static int c_reset_peak(lua_State *L) { (void)L; sere_cuda_reset_peak(); return 0; }
static int c_empty_cache(lua_State *L) {
  need_device(L, 1);
  if (sere_cuda_empty_cache()) return sere_lua_raise(L);
  return 0;
}
static int c_set_poison(lua_State *L) { sere_cuda_set_poison(lua_toboolean(L, 1)); return 0; }
#else
static int c_no_cuda(lua_State *L) { need_device(L, 1); return 0; }
#define c_device_name c_no_cuda
#define c_mem_info c_no_cuda
#define c_set_device c_no_cuda
#define c_synchronize c_no_cuda
#define c_memory_stats c_no_cuda
#define c_reset_peak c_no_cuda
#define c_empty_cache c_no_cuda
#define c_set_poison c_no_cuda
#endif

void sere_lua_open_cuda(lua_State *L) {
  static const luaL_Reg functions[] = {
      {"cuda_is_available", c_is_available},
      {"cuda_device_count", c_device_count},
      {"cuda_compiled", c_compiled},
      {"cuda_emulated", c_emulated},
      {"cuda_device_name", c_device_name},
      {"cuda_mem_info", c_mem_info},
      {"cuda_set_device", c_set_device},
      {"cuda_synchronize", c_synchronize},
      {"cuda_memory_stats", c_memory_stats},
      {"cuda_reset_peak_memory_stats", c_reset_peak},
      {"cuda_empty_cache", c_empty_cache},
      {"cuda_set_poison", c_set_poison},
#ifdef SERE_CUDA_EMULATED
      {"cuda_launch_count", c_launch_count},
#endif
      {NULL, NULL}};
  sere_lua_register(L, NULL, functions);
}
