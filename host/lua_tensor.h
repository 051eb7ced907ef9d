/* lua_tensor.h — the helpers every Lua binding file uses: pushing and
 * checking tensors, turning core errors into Lua errors, 1-based dims,
 * shapes from tables or varargs, and registration of functions/methods.
 *
 * Lua-side conventions (documented in docs/lua-api.md):
 *  - dims are 1-based; negative dims count from the end (-1 is the last);
 *  - positions (narrow start, select index, t[i]) are 1-based;
 *  - index tensors (gather, index_select, argmax results, ...) hold 1-based
 *    indices; the core takes `base` = 1 from these bindings.
 */
#ifndef SERE_LUA_TENSOR_H
#define SERE_LUA_TENSOR_H

#include <lauxlib.h>
#include <lua.h>

#include "tensor.h"

#define SERE_TENSOR_MT "sere.Tensor"

/* Pushes a tensor, stealing the reference. NULL raises the core's last
 * error as a Lua error (so `return sere_lua_push(L, sere_op(...))` is the
 * usual binding body). */
int sere_lua_push(lua_State *L, sere_tensor *t);
/* Raises the core's last error message as a Lua error. */
int sere_lua_raise(lua_State *L);
/* The tensor at idx (borrowed) or a Lua error naming `op` and the argument. */
sere_tensor *sere_lua_check(lua_State *L, int idx, const char *op);
sere_tensor *sere_lua_opt_tensor(lua_State *L, int idx); /* NULL if not a tensor */
/* Converts a 1-based (or negative) Lua dim at idx to a core dim (0-based or negative). */
int sere_lua_dim(lua_State *L, int idx, const char *op);
int sere_lua_dim_value(lua_State *L, lua_Integer d, const char *op);
/* Reads a shape from a table at idx, or from consecutive integers idx..top.
 * Returns the number of stack slots consumed (1 for a table). */
int sere_lua_shape(lua_State *L, int idx, int *ndim, int64_t *shape, const char *op);
/* Reads the dtype named by field "dtype" of the table at idx (or `def`). */
sere_dtype sere_lua_opt_dtype(lua_State *L, int idx, sere_dtype def);
sere_dtype sere_lua_check_dtype(lua_State *L, int idx);
/* 1 and *dev set if the value at idx is a device name ("cpu", "cuda"), 0 if
 * it is not; raises for "cuda:N" (one GPU per process). */
int sere_lua_device_name(lua_State *L, int idx, sere_device_type *dev);
/* A tensor, or a number/boolean converted to a 0-dim tensor of dtype `like`. */
sere_tensor *sere_lua_tensor_or_scalar(lua_State *L, int idx, sere_dtype like, const char *op);

/* Adds C functions to the Tensor method table (`methods`) and/or to the
 * `sere` module table (`functions`); either may be NULL. */
void sere_lua_register(lua_State *L, const luaL_Reg *methods, const luaL_Reg *functions);
/* Sets metamethods (__add, __eq, ...) on the Tensor metatable. */
void sere_lua_set_metamethods(lua_State *L, const luaL_Reg *metamethods);

/* One per binding file; each registers its area (called by luaopen_sere_core). */
void sere_lua_open_tensor(lua_State *L);
void sere_lua_open_create(lua_State *L);
void sere_lua_open_math(lua_State *L);
void sere_lua_open_reduce(lua_State *L);
void sere_lua_open_index(lua_State *L);
void sere_lua_open_io(lua_State *L);
void sere_lua_open_cuda(lua_State *L);
/* nn ops (issue 3), one binding file per op group */
void sere_lua_open_nn_norm(lua_State *L);      /* lua_nn_norm.c: layer norm, batch norm, l2 norm */
void sere_lua_open_nn_act(lua_State *L);       /* lua_nn_act.c: gelu, relu */
void sere_lua_open_nn_attention(lua_State *L); /* lua_nn_attention.c */
void sere_lua_open_nn_spatial(lua_State *L);   /* lua_nn_spatial.c: patch embed, interpolate, grid sample */
void sere_lua_open_nn_loss(lua_State *L);      /* lua_nn_loss.c: soft cross-entropy */
void sere_lua_open_optim(lua_State *L);        /* lua_optim.c: fused AdamW, EMA, norms, scaling */
void sere_lua_open_image(lua_State *L);        /* lua_image.c: image files, datasets */
void sere_lua_open_augment(lua_State *L);      /* lua_augment.c: augmentations, crop/mask sampling, overlap grids */
void sere_lua_open_loader(lua_State *L);       /* lua_loader.c: multi-crop samples, threaded loader */
void sere_lua_open_autocast(lua_State *L);     /* lua_autocast.c: the mixed-precision mode */
int luaopen_sere_core(lua_State *L);

#endif
