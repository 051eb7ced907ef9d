/* lua_io.c — Lua bindings for safetensors files (io_safetensors.h):
 *   io_save(path, {name = tensor, ...}, metadata_or_nil)
 *   io_load(path) -> {name = tensor, ...}, {key = value, ...}
 * (mapped to sere.io.save / sere.io.load by lua/sere/init.lua).
 *
 * Everything is validated before the C arrays are allocated, and those are
 * Lua userdata, so an error raised at any point strands no memory. A loaded
 * file is held in a userdata with __gc until its tensors have been handed
 * to Lua, for the same reason. */
#include <string.h>

#include "io_safetensors.h"
#include "lua_tensor.h"

#define LOADED_MT "sere.io.loaded"

/* The string at idx, which C will see whole only if it holds no NUL byte. */
static const char *check_c_string(lua_State *L, int idx, const char *what, const char *name) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len) luaL_error(L, "io.save: %s '%s' contains a NUL byte", what, name ? name : s);
  return s;
}

/* Counts the entries of the tensors table (index 2), checking each. */
static int count_tensors(lua_State *L) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "io.save: tensor names must be strings, got a %s key", luaL_typename(L, -2));
    const char *name = check_c_string(L, -2, "tensor name", NULL);
    if (!sere_lua_opt_tensor(L, -1))
      luaL_error(L, "io.save: '%s' is not a tensor (got %s)", name, luaL_typename(L, -1));
    n++;
    lua_pop(L, 1);
  }
  return n;
}

/* Counts the entries of the metadata table (index 3), checking each. */
static int count_metadata(lua_State *L) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, 3)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "io.save: metadata keys must be strings, got a %s key", luaL_typename(L, -2));
    const char *key = check_c_string(L, -2, "metadata key", NULL);
    int type = lua_type(L, -1);
    if (type != LUA_TSTRING && type != LUA_TNUMBER)
      luaL_error(L, "io.save: metadata value for '%s' must be a string or a number, got %s", key,
                 luaL_typename(L, -1));
    if (type == LUA_TSTRING) check_c_string(L, -1, "metadata value of", key);
    n++;
    lua_pop(L, 1);
  }
  return n;
}

static int io_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int has_meta = !lua_isnoneornil(L, 3);
  if (has_meta) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  int n = count_tensors(L), nmeta = has_meta ? count_metadata(L) : 0;

  const char **names = lua_newuserdatauv(L, (size_t)(n + 2 * nmeta + 1) * sizeof *names, 0);
  sere_tensor **tensors = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *tensors, 0);
  const char **keys = names + n, **values = keys + nmeta;
  int i = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    names[i] = lua_tostring(L, -2);
    tensors[i++] = sere_lua_opt_tensor(L, -1); /* saved by value: only the data is read */
    lua_pop(L, 1);
  }
  /* Numbers become strings (tostring); the converted strings stay alive in
   * `converted` until the file is written. */
  lua_createtable(L, nmeta, 0);
  int converted = lua_gettop(L);
  i = 0;
  lua_pushnil(L);
  while (has_meta && lua_next(L, 3)) {
    keys[i] = lua_tostring(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) {
      values[i] = lua_tostring(L, -1);
    } else {
      values[i] = luaL_tolstring(L, -1, NULL);
      lua_rawseti(L, converted, i + 1);
    }
    i++;
    lua_pop(L, 1);
  }
  if (sere_safetensors_write(path, n, names, tensors, nmeta, keys, values))
    return luaL_error(L, "io.save: %s", sere_last_error());
  return 0;
}

static int loaded_gc(lua_State *L) {
  sere_safetensors **box = luaL_checkudata(L, 1, LOADED_MT);
  sere_safetensors_free(*box);
  *box = NULL;
  return 0;
}

static int io_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  sere_safetensors **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, LOADED_MT);
  sere_safetensors *st = *box = sere_safetensors_read(path);
  if (!st) return luaL_error(L, "io.load: %s", sere_last_error());
  lua_createtable(L, 0, st->count);
  for (int i = 0; i < st->count; i++) {
    /* sere_lua_push raises only before it takes the tensor, so the slot is
     * cleared after it returns and __gc frees the rest on an error. */
    sere_lua_push(L, st->tensors[i]);
    st->tensors[i] = NULL;
    lua_setfield(L, -2, st->names[i]);
  }
  lua_createtable(L, 0, st->nmeta);
  for (int i = 0; i < st->nmeta; i++) {
    lua_pushstring(L, st->meta_values[i]);
    lua_setfield(L, -2, st->meta_keys[i]);
  }
  sere_safetensors_free(st);
  *box = NULL;
  return 2;
}

void sere_lua_open_io(lua_State *L) {
  luaL_newmetatable(L, LOADED_MT);
  lua_pushcfunction(L, loaded_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  static const luaL_Reg functions[] = {{"io_save", io_save}, {"io_load", io_load}, {NULL, NULL}};
  sere_lua_register(L, NULL, functions);
}
