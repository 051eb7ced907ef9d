/* lua_math.c — the Lua surface of element-wise math (ops/elementwise*.c):
 * arithmetic metamethods (+ - * / ^ and unary -), arithmetic, unary,
 * comparison and logical methods, clamp, where, masked_fill, and in-place
 * versions with a trailing underscore that return the tensor itself.
 *
 * Every out-of-place op is both a method and a module function
 * (t:add(u) and sere.add(t, u)), and a number is accepted wherever a
 * tensor operand is (t + 1, 2 - t, sere.lt(0, t)). Comparisons are methods
 * only, not __eq/__lt/__le, whose results Lua would coerce to a boolean. */
#include <math.h>

#include "lua_tensor.h"
#include "ops/ops.h"

static int is_operand(lua_State *L, int idx) {
  return sere_lua_opt_tensor(L, idx) || lua_type(L, idx) == LUA_TNUMBER || lua_isboolean(L, idx);
}

/* A number (or boolean) operand, or a Lua error naming op. */
static double check_number(lua_State *L, int idx, const char *op) {
  if (lua_type(L, idx) == LUA_TNUMBER) return lua_tonumber(L, idx);
  if (lua_isboolean(L, idx)) return lua_toboolean(L, idx);
  return luaL_error(L, "%s: argument #%d: expected a tensor or a number, got %s", op, idx, luaL_typename(L, idx));
}

static int no_tensor(lua_State *L, const char *op) {
  return luaL_error(L, "%s: expected a tensor operand, got %s and %s", op, luaL_typename(L, 1),
                    luaL_typename(L, 2));
}

static int inplace_done(lua_State *L, int rc) {
  if (rc) return sere_lua_raise(L);
  lua_settop(L, 1);
  return 1;
}

/* ---- binary arithmetic: add(other[, alpha]) adds other * alpha --------- */
static double opt_alpha(lua_State *L, sere_binary_op op) {
  if (op != SERE_ADD && op != SERE_SUB) return 1;
  return luaL_optnumber(L, 3, 1);
}

static int binary(lua_State *L, sere_binary_op op, const char *name) {
  sere_tensor *a = sere_lua_opt_tensor(L, 1), *b = sere_lua_opt_tensor(L, 2);
  double alpha = opt_alpha(L, op);
  if (!a && !b) return no_tensor(L, name);
  if (!a) {
    if (alpha != 1) return luaL_error(L, "%s: alpha needs a tensor as the first operand", name);
    return sere_lua_push(L, sere_binary_scalar(op, b, check_number(L, 1, name), 1));
  }
  if (!b) return sere_lua_push(L, sere_binary_scalar(op, a, check_number(L, 2, name) * alpha, 0));
  if (alpha == 1) return sere_lua_push(L, sere_binary(op, a, b));
  sere_tensor *scaled = sere_binary_scalar(SERE_MUL, b, alpha, 0);
  if (!scaled) return sere_lua_raise(L);
  sere_tensor *r = sere_binary(op, a, scaled);
  sere_tensor_release(scaled);
  return sere_lua_push(L, r);
}

static int binary_(lua_State *L, sere_binary_op op, const char *name) {
  sere_tensor *a = sere_lua_check(L, 1, name), *b = sere_lua_opt_tensor(L, 2);
  double alpha = opt_alpha(L, op);
  if (!b) return inplace_done(L, sere_binary_scalar_(op, a, check_number(L, 2, name) * alpha));
  if (alpha == 1) return inplace_done(L, sere_binary_(op, a, b));
  sere_tensor *scaled = sere_binary_scalar(SERE_MUL, b, alpha, 0);
  int rc = scaled ? sere_binary_(op, a, scaled) : -1;
  sere_tensor_release(scaled);
  return inplace_done(L, rc);
}

#define BINARY(name, op)                                                   \
  static int m_##name(lua_State *L) { return binary(L, op, #name); }       \
  static int m_##name##_(lua_State *L) { return binary_(L, op, #name "_"); }
BINARY(add, SERE_ADD)
BINARY(sub, SERE_SUB)
BINARY(mul, SERE_MUL)
BINARY(div, SERE_DIV)
BINARY(pow, SERE_POW)
BINARY(maximum, SERE_MAXIMUM)
BINARY(minimum, SERE_MINIMUM)

/* ---- unary ------------------------------------------------------------- */
#define UNARY(name, op)                                                                         \
  static int m_##name(lua_State *L) { return sere_lua_push(L, sere_unary(op, sere_lua_check(L, 1, #name))); } \
  static int m_##name##_(lua_State *L) { return inplace_done(L, sere_unary_(op, sere_lua_check(L, 1, #name "_"))); }
UNARY(neg, SERE_NEG)
UNARY(exp, SERE_EXP)
UNARY(log, SERE_LOG)
UNARY(sqrt, SERE_SQRT)
UNARY(rsqrt, SERE_RSQRT)
UNARY(abs, SERE_ABS)
UNARY(sign, SERE_SIGN)
UNARY(sin, SERE_SIN)
UNARY(cos, SERE_COS)
UNARY(tanh, SERE_TANH)
UNARY(sigmoid, SERE_SIGMOID)
UNARY(reciprocal, SERE_RECIPROCAL)
UNARY(square, SERE_SQUARE)
UNARY(floor, SERE_FLOOR)
UNARY(ceil, SERE_CEIL)
UNARY(round, SERE_ROUND)
UNARY(log1p, SERE_LOG1P)
UNARY(expm1, SERE_EXPM1)
UNARY(erf, SERE_ERF)
UNARY(logical_not, SERE_LOGICAL_NOT)

/* ---- comparisons and logical ops --------------------------------------- */
static int compare(lua_State *L, sere_compare_op op, const char *name) {
  /* number op tensor is tensor (mirrored op) number */
  static const sere_compare_op mirror[] = {[SERE_EQ] = SERE_EQ, [SERE_NE] = SERE_NE, [SERE_LT] = SERE_GT,
                                           [SERE_LE] = SERE_GE, [SERE_GT] = SERE_LT, [SERE_GE] = SERE_LE};
  sere_tensor *a = sere_lua_opt_tensor(L, 1), *b = sere_lua_opt_tensor(L, 2);
  if (a && b) return sere_lua_push(L, sere_compare(op, a, b));
  if (a) return sere_lua_push(L, sere_compare_scalar(op, a, check_number(L, 2, name)));
  if (b) return sere_lua_push(L, sere_compare_scalar(mirror[op], b, check_number(L, 1, name)));
  return no_tensor(L, name);
}

#define COMPARE(name, op) \
  static int m_##name(lua_State *L) { return compare(L, op, #name); }
COMPARE(eq, SERE_EQ)
COMPARE(ne, SERE_NE)
COMPARE(lt, SERE_LT)
COMPARE(le, SERE_LE)
COMPARE(gt, SERE_GT)
COMPARE(ge, SERE_GE)

/* Numbers and booleans become 0-dim bool tensors (non-zero is true). */
static int logical(lua_State *L, int op, const char *name) {
  for (int i = 1; i <= 2; i++)
    if (!is_operand(L, i)) check_number(L, i, name);
  if (!sere_lua_opt_tensor(L, 1) && !sere_lua_opt_tensor(L, 2)) return no_tensor(L, name);
  sere_tensor *a = sere_lua_tensor_or_scalar(L, 1, SERE_BOOL, name);
  sere_tensor *b = sere_lua_tensor_or_scalar(L, 2, SERE_BOOL, name);
  sere_tensor *r = sere_logical(op, a, b);
  sere_tensor_release(a);
  sere_tensor_release(b);
  return sere_lua_push(L, r);
}

static int m_logical_and(lua_State *L) { return logical(L, 0, "logical_and"); }
static int m_logical_or(lua_State *L) { return logical(L, 1, "logical_or"); }
static int m_logical_xor(lua_State *L) { return logical(L, 2, "logical_xor"); }

/* ---- clamp(min, max): either bound may be nil -------------------------- */
static double bound(lua_State *L, int idx, const char *name) {
  if (lua_isnoneornil(L, idx)) return NAN;
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: bounds must be numbers or nil, got %s", name, luaL_typename(L, idx));
  return lua_tonumber(L, idx);
}

static sere_tensor *clamp_args(lua_State *L, const char *name, double *lo, double *hi) {
  sere_tensor *a = sere_lua_check(L, 1, name);
  *lo = bound(L, 2, name);
  *hi = bound(L, 3, name);
  if (isnan(*lo) && isnan(*hi)) luaL_error(L, "%s: give at least one of min and max", name);
  return a;
}

static int m_clamp(lua_State *L) {
  double lo, hi;
  sere_tensor *a = clamp_args(L, "clamp", &lo, &hi);
  return sere_lua_push(L, sere_clamp(a, lo, hi));
}

static int m_clamp_(lua_State *L) {
  double lo, hi;
  sere_tensor *a = clamp_args(L, "clamp_", &lo, &hi);
  return inplace_done(L, sere_clamp_(a, lo, hi));
}

/* ---- where, masked_fill, fill ------------------------------------------ */
/* A where branch: the tensor (retained), or a number/boolean as a 0-dim
 * tensor (i64 for a Lua integer, f32 for a float, bool for a boolean),
 * which takes part in type promotion like a scalar. */
static sere_tensor *branch(lua_State *L, int idx) {
  sere_tensor *t = sere_lua_opt_tensor(L, idx);
  if (t) return sere_tensor_retain(t);
  sere_dtype d = lua_isboolean(L, idx) ? SERE_BOOL : lua_isinteger(L, idx) ? SERE_I64 : SERE_F32;
  return sere_lua_tensor_or_scalar(L, idx, d, "where");
}

static int where(lua_State *L, int icond, int ia, int ib) {
  sere_tensor *cond = sere_lua_check(L, icond, "where");
  if (!is_operand(L, ia)) check_number(L, ia, "where");
  if (!is_operand(L, ib)) check_number(L, ib, "where");
  sere_tensor *a = branch(L, ia), *b = branch(L, ib);
  sere_tensor *r = sere_where(cond, a, b);
  sere_tensor_release(a);
  sere_tensor_release(b);
  return sere_lua_push(L, r);
}

static int f_where(lua_State *L) { return where(L, 1, 2, 3); } /* sere.where(cond, a, b) */
static int m_where(lua_State *L) { return where(L, 2, 1, 3); } /* a:where(cond, b) */

static double fill_value(lua_State *L, int idx, const char *name) {
  if (lua_type(L, idx) != LUA_TNUMBER && !lua_isboolean(L, idx))
    luaL_error(L, "%s: the value must be a number or a boolean, got %s", name, luaL_typename(L, idx));
  return lua_isboolean(L, idx) ? lua_toboolean(L, idx) : lua_tonumber(L, idx);
}

static int m_masked_fill(lua_State *L) {
  sere_tensor *a = sere_lua_check(L, 1, "masked_fill"), *m = sere_lua_check(L, 2, "masked_fill");
  return sere_lua_push(L, sere_masked_fill(a, m, fill_value(L, 3, "masked_fill")));
}

static int m_masked_fill_(lua_State *L) {
  sere_tensor *a = sere_lua_check(L, 1, "masked_fill_"), *m = sere_lua_check(L, 2, "masked_fill_");
  return inplace_done(L, sere_masked_fill_(a, m, fill_value(L, 3, "masked_fill_")));
}

static int m_fill_(lua_State *L) {
  sere_tensor *a = sere_lua_check(L, 1, "fill_");
  return inplace_done(L, sere_fill_(a, fill_value(L, 2, "fill_")));
}

static int m_zero_(lua_State *L) { return inplace_done(L, sere_fill_(sere_lua_check(L, 1, "zero_"), 0)); }

void sere_lua_open_math(lua_State *L) {
  static const luaL_Reg both[] = {
      {"add", m_add}, {"sub", m_sub}, {"mul", m_mul}, {"div", m_div}, {"pow", m_pow},
      {"maximum", m_maximum}, {"minimum", m_minimum}, {"neg", m_neg}, {"exp", m_exp}, {"log", m_log},
      {"sqrt", m_sqrt}, {"rsqrt", m_rsqrt}, {"abs", m_abs}, {"sign", m_sign}, {"sin", m_sin}, {"cos", m_cos},
      {"tanh", m_tanh}, {"sigmoid", m_sigmoid}, {"reciprocal", m_reciprocal}, {"square", m_square},
      {"floor", m_floor}, {"ceil", m_ceil}, {"round", m_round}, {"log1p", m_log1p}, {"expm1", m_expm1},
      {"erf", m_erf}, {"logical_not", m_logical_not}, {"eq", m_eq}, {"ne", m_ne}, {"lt", m_lt}, {"le", m_le},
      {"gt", m_gt}, {"ge", m_ge}, {"logical_and", m_logical_and}, {"logical_or", m_logical_or},
      {"logical_xor", m_logical_xor}, {"clamp", m_clamp}, {"masked_fill", m_masked_fill}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"where", m_where}, {"add_", m_add_}, {"sub_", m_sub_}, {"mul_", m_mul_}, {"div_", m_div_},
      {"pow_", m_pow_}, {"maximum_", m_maximum_}, {"minimum_", m_minimum_}, {"neg_", m_neg_},
      {"exp_", m_exp_}, {"log_", m_log_}, {"sqrt_", m_sqrt_}, {"rsqrt_", m_rsqrt_}, {"abs_", m_abs_},
      {"sign_", m_sign_}, {"sin_", m_sin_}, {"cos_", m_cos_}, {"tanh_", m_tanh_}, {"sigmoid_", m_sigmoid_},
      {"reciprocal_", m_reciprocal_}, {"square_", m_square_}, {"floor_", m_floor_}, {"ceil_", m_ceil_},
      {"round_", m_round_}, {"log1p_", m_log1p_}, {"expm1_", m_expm1_}, {"erf_", m_erf_},
      {"logical_not_", m_logical_not_}, {"clamp_", m_clamp_}, {"masked_fill_", m_masked_fill_},
      {"fill_", m_fill_}, {"zero_", m_zero_}, {NULL, NULL}};
  static const luaL_Reg functions[] = {{"where", f_where}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__add", m_add}, {"__sub", m_sub}, {"__mul", m_mul}, {"__div", m_div},
                                  {"__pow", m_pow}, {"__unm", m_neg}, {NULL, NULL}};
  sere_lua_register(L, both, both);
  sere_lua_register(L, methods, functions);
  sere_lua_set_metamethods(L, meta);
}
