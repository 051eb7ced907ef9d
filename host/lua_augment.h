/* lua_augment.h — binding helpers of lua_augment.c that other binding
 * files share (the loader reads the same crop recipe tables). */
#ifndef SERE_LUA_AUGMENT_H
#define SERE_LUA_AUGMENT_H

#include <lua.h>

#include "ops/augment.h"

/* A crop recipe table at idx -> struct (raises a Lua error naming `op`). */
sere_crop_recipe sere_lua_check_crop_recipe(lua_State *L, int idx, const char *op);

#endif
