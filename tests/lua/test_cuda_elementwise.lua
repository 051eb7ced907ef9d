-- test_cuda_elementwise.lua — CUDA parity of the element-wise family
-- (kernels/elementwise.cu) against the CPU, forward and backward:
--   * add, sub, mul, div, pow, maximum, minimum: same shapes (the
--     vectorised path, with a tail of 1-3 elements), odd sizes, NumPy
--     broadcasting (rows, columns, both sides, 0-dim GPU tensors),
--     transposed and narrowed (unaligned) views, bf16, bf16 mixed with
--     f32, integer dtypes exactly (wrap-around, promotion, true division),
--     a number on either side, ties of maximum/minimum, NaN;
--   * every unary op (half-to-even round, zero-gradient ops, integer
--     dtypes, logical_not of floats), clamp with one or two bounds and
--     integer clamps;
--   * comparisons (tensor and number, mixed dtypes, NaN) and logical ops
--     (with a Lua boolean as the other side);
--   * where and masked_fill with broadcast conditions and number branches;
--   * every in-place variant, into contiguous tensors and views;
--   * gradient accumulation: a leaf used three times, .grad over two
--     backward calls, for an f32 and a bf16 leaf;
--   * misuse: tensors on two devices are refused naming the op.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local shape_str = P.shape_str

-- Positive inputs for ops with a restricted domain (log, pow's base, ...).
local function positive(shape) return P.randn(shape):abs() + 0.25 end

-- ---- binary arithmetic ------------------------------------------------------

local binary = {
  {"add", function(a, b) return a + b end},
  {"sub", function(a, b) return a - b end},
  {"mul", function(a, b) return a * b end},
  {"div", function(a, b) return a / b end},
  {"pow", function(a, b) return a ^ b end},
  {"maximum", function(a, b) return sere.maximum(a, b) end},
  {"minimum", function(a, b) return sere.minimum(a, b) end},
}

-- Operand shapes: same shape, odd sizes, broadcasting both ways, 0-dim.
local shape_pairs = {
  {{7, 33}, {7, 33}}, {{197}, {197}}, {{1}, {1}}, {{2, 3, 4}, {2, 3, 4}},
  {{7, 33}, {33}}, {{7, 33}, {7, 1}}, {{4, 1, 33}, {5, 1}}, {{1, 9}, {6, 1}},
  {{5, 7}, {}}, {{}, {3, 11}}, {{300, 257}, {300, 257}},
}

-- Operands of `op`: pow gets a positive base (its gradient takes log(a));
-- div a denominator away from zero.
local function operands(name, sa, sb)
  local a = name == "pow" and positive(sa) or P.randn(sa)
  local b = P.randn(sb)
  if name == "div" then b = b:sign() * (b:abs() + 0.5) end
  return a, b
end

for _, op in ipairs(binary) do
  local name, f = op[1], op[2]
  for _, sp in ipairs(shape_pairs) do
    local a, b = operands(name, sp[1], sp[2])
    P.check(T, {name = string.format("%s %s %s", name, shape_str(sp[1]), shape_str(sp[2])),
                inputs = {a, b}, fn = f, grad = true})
  end
  local a, b = operands(name, {9, 17}, {17, 9})
  P.check(T, {name = name .. " of transposed operands", inputs = {a, b},
              fn = function(x, y) return f(x, y:t()) end, grad = true})
  a, b = operands(name, {6, 41}, {41})
  P.check(T, {name = name .. " of narrowed (unaligned) operands", inputs = {a, b},
              fn = function(x, y) return f(x:narrow(2, 2, 39), y:narrow(1, 3, 39)) end, grad = true})
  a, b = operands(name, {5, 33}, {5, 33})
  P.check(T, {name = name .. " bf16", inputs = {a, b}, fn = f, grad = true, dtype = "bf16"})
  P.check(T, {name = name .. " bf16 with f32", inputs = {a:to("bf16"), b}, fn = f, grad = true})
  P.check(T, {name = name .. " bf16 broadcast with f32", inputs = {a:to("bf16"), b:narrow(1, 1, 1)},
              fn = f, grad = true})
  P.check(T, {name = name .. " with a number after", inputs = {a},
              fn = function(x) return f(x, 1.75) end, grad = true})
  P.check(T, {name = name .. " with a number before", inputs = {name == "pow" and a or b},
              fn = function(x) return f(1.75, x) end, grad = true})
end

P.check(T, {name = "pow with exponent 2 (squared)", inputs = {P.randn({7, 33})},
            fn = function(x) return x ^ 2 end, grad = true})
P.check(T, {name = "pow with a negative base and whole exponents",
            inputs = {P.randn({5, 9}), sere.tensor({0, 1, 2, 3, -1, -2, 3, 2, 1})},
            fn = function(a, b) return a ^ b end})
P.check(T, {name = "maximum/minimum with ties share the gradient",
            inputs = {sere.tensor({1, 2, 3, 4, 5, 6, 7}), sere.tensor({1, 0, 3, 9, 5, 0, 7})},
            fn = function(a, b) return a:maximum(b) + a:minimum(b) * 3 end, grad = true})
P.check(T, {name = "maximum/minimum propagate NaN",
            inputs = {sere.tensor({0 / 0, 1, 2, 0 / 0}), sere.tensor({1, 0 / 0, 3, 0 / 0})},
            fn = function(a, b) return a:maximum(b), a:minimum(b) end})
P.check(T, {name = "add a 0-dim cuda tensor", inputs = {P.randn({7, 33}), P.randn({})},
            fn = function(a, b) return a + b, b * a end, grad = true})

-- Integers: exact, with PyTorch's promotion and wrap-around.
local ia = sere.tensor({{7, -3, 0, 12, -9}, {2 ^ 62, -(2 ^ 62), 5, 1, -1}}, {dtype = "i64"})
local ib = sere.tensor({3, 4, -2, 5, 2}, {dtype = "i64"})
for _, op in ipairs(binary) do
  if op[1] ~= "pow" then
    P.check(T, {name = op[1] .. " i64", inputs = {ia, ib}, fn = op[2]})
    P.check(T, {name = op[1] .. " i32 with i64", inputs = {ia:narrow(1, 1, 1):to("i32"), ib}, fn = op[2]})
    P.check(T, {name = op[1] .. " u8 with f32", inputs = {ib:abs():to("u8"), P.randn({2, 5})}, fn = op[2]})
  end
end
P.check(T, {name = "pow i64", inputs = {ia:narrow(1, 1, 1), ib:abs()}, fn = function(a, b) return a ^ b end})
P.check(T, {name = "i64 with numbers (whole stays i64, fractional gives f32)", inputs = {ia},
            fn = function(a) return a + 3, a * 2.5, 7 - a, a / 2, a ^ 2 end})
P.check(T, {name = "bool + bool and bool * number",
            inputs = {sere.tensor({true, false, true}), sere.tensor({true, true, false})},
            fn = function(a, b) return a + b, a * 3 end})

-- ---- unary ops and clamp ------------------------------------------------------

local unary = {
  {"neg"}, {"exp"}, {"log", positive}, {"sqrt", positive}, {"rsqrt", positive}, {"abs"}, {"sign"},
  {"sin"}, {"cos"}, {"tanh"}, {"sigmoid"}, {"reciprocal"}, {"square"}, {"floor"}, {"ceil"}, {"round"},
  {"log1p", positive}, {"expm1"}, {"erf"},
}
for _, u in ipairs(unary) do
  local name, make = u[1], u[2] or function(s) return P.randn(s) * 2 end
  for _, shape in ipairs({{7, 33}, {197}, {1}, {2, 3, 4}}) do
    P.check(T, {name = string.format("%s %s", name, shape_str(shape)), inputs = {make(shape)},
                fn = function(x) return x[name](x) end, grad = true})
  end
  P.check(T, {name = name .. " of a transposed view", inputs = {make({9, 17})},
              fn = function(x) return x:t()[name](x:t()) end, grad = true})
  P.check(T, {name = name .. " bf16", inputs = {make({5, 33})}, fn = function(x) return x[name](x) end,
              grad = true, dtype = "bf16"})
end
P.check(T, {name = "round halves to even", inputs = {sere.tensor({0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49})},
            fn = function(x) return x:round() end, grad = true})
P.check(T, {name = "log and sqrt of negatives are NaN", inputs = {sere.tensor({-1, 0, 1, -2})},
            fn = function(x) return x:log(), x:sqrt(), x:rsqrt() end})
P.check(T, {name = "integer unary ops keep the dtype", inputs = {ia},
            fn = function(x) return x:neg(), x:abs(), x:sign(), x:square(), x:floor(), x:ceil(), x:round() end})
P.check(T, {name = "i32 unary and float results of integers", inputs = {ib:to("i32")},
            fn = function(x) return x:neg(), x:abs(), x:exp(), x:sigmoid() end})
P.check(T, {name = "logical_not of bool and of floats",
            inputs = {sere.tensor({true, false, true}), sere.tensor({0, 2.5, 0 / 0})},
            fn = function(b, f) return b:logical_not(), f:logical_not() end})

P.check(T, {name = "clamp [-0.5, 0.8]", inputs = {P.randn({7, 33})},
            fn = function(x) return x:clamp(-0.5, 0.8) end, grad = true})
P.check(T, {name = "clamp min only, max only, transposed", inputs = {P.randn({9, 17})},
            fn = function(x) return x:clamp(0), x:t():clamp(nil, 0.3) end, grad = true})
P.check(T, {name = "clamp bf16", inputs = {P.randn({5, 33})}, fn = function(x) return x:clamp(-1, 1) end,
            grad = true, dtype = "bf16"})
P.check(T, {name = "clamp i64 whole bounds and fractional bound", inputs = {ia},
            fn = function(x) return x:clamp(-4, 6), x:clamp(-2.5) end})
P.check(T, {name = "clamp keeps NaN", inputs = {sere.tensor({0 / 0, 5, -5})},
            fn = function(x) return x:clamp(-1, 1) end})

-- ---- comparisons and logical ops -------------------------------------------------

local compares = {"eq", "ne", "lt", "le", "gt", "ge"}
for _, c in ipairs(compares) do
  local a, b = (P.randn({7, 33}) * 2):round(), (P.randn({33}) * 2):round() -- ties for eq / le / ge
  P.check(T, {name = c .. " broadcast", inputs = {a, b}, fn = function(x, y) return x[c](x, y) end})
  P.check(T, {name = c .. " with a number, both sides", inputs = {a},
              fn = function(x) return x[c](x, 1), sere[c](0.5, x) end})
  P.check(T, {name = c .. " i64 with f32 and bf16", inputs = {ia, P.randn({2, 5}) * 4},
              fn = function(x, y) return x[c](x, y), y:to("bf16")[c](y:to("bf16"), x) end})
  P.check(T, {name = c .. " with NaN", inputs = {sere.tensor({0 / 0, 1, 2}), sere.tensor({0 / 0, 0 / 0, 2})},
              fn = function(x, y) return x[c](x, y) end})
end

local bools = {P.randn({4, 1, 9}):gt(0), P.randn({5, 1}):gt(0)}
for _, l in ipairs({"logical_and", "logical_or", "logical_xor"}) do
  P.check(T, {name = l .. " broadcast", inputs = bools, fn = function(x, y) return x[l](x, y) end})
  P.check(T, {name = l .. " with a boolean and a number", inputs = {bools[1]},
              fn = function(x) return x[l](x, true), x[l](x, 0) end})
  P.check(T, {name = l .. " of floats", inputs = {P.randn({3, 7}), sere.tensor({0, 1, 0, 2, 0, 3, 0})},
              fn = function(x, y) return x[l](x, y) end})
end

-- ---- where and masked_fill --------------------------------------------------------

P.check(T, {name = "where broadcast [7, 1] [7, 33] [33]",
            inputs = {P.randn({7, 1}):gt(0), P.randn({7, 33}), P.randn({33})},
            fn = function(c, a, b) return sere.where(c, a, b) end, grad = {false, true, true}})
P.check(T, {name = "where with a number branch", inputs = {P.randn({7, 33}), P.randn({7, 33})},
            fn = function(c, a) return a:where(c:gt(0), 0), sere.where(c:lt(0), 2.5, a) end, grad = {false, true}})
P.check(T, {name = "where of a transposed view, bf16", inputs = {P.randn({9, 17}), P.randn({17, 9})},
            fn = function(c, a) return sere.where(c:gt(0), a:t(), c) end, grad = true, dtype = "bf16"})
P.check(T, {name = "where i64 and bool branches", inputs = {P.randn({2, 5}):gt(0), ia},
            fn = function(c, a) return sere.where(c, a, 7), sere.where(c, c, false) end})
P.check(T, {name = "masked_fill broadcast mask", inputs = {P.randn({7, 33}), P.randn({33})},
            fn = function(x, m) return x:masked_fill(m:gt(0), -1e4) end, grad = {true, false}})
P.check(T, {name = "masked_fill with -inf, bf16", inputs = {P.randn({4, 9, 9})},
            fn = function(x) return x:masked_fill(x:lt(-0.5), -math.huge) end, grad = true, dtype = "bf16"})
P.check(T, {name = "masked_fill i64", inputs = {ia}, fn = function(x) return x:masked_fill(x:gt(1), -7) end})

-- ---- in place ------------------------------------------------------------------------

for _, op in ipairs(binary) do
  local name = op[1]
  local a, b = operands(name, {7, 33}, {33})
  P.check(T, {name = name .. "_ broadcast", inputs = {a, b},
              fn = function(x, y) x[name .. "_"](x, y); return x end})
  P.check(T, {name = name .. "_ with a number", inputs = {a},
              fn = function(x) x[name .. "_"](x, 1.5); return x end})
  P.check(T, {name = name .. "_ into a transposed view", inputs = {a, b},
              fn = function(x, y) local v = x:t(); v[name .. "_"](v, y:narrow(1, 1, 7)); return x end})
  P.check(T, {name = name .. "_ bf16 with f32", inputs = {a:to("bf16"), b},
              fn = function(x, y) x[name .. "_"](x, y); return x end})
end
P.check(T, {name = "add_ i64 and mul_ i32 by a number", inputs = {ia, ib:to("i32"), ib},
            fn = function(x, y, z) x:add_(z); y:mul_(3); return x, y end})
P.check(T, {name = "add_ of an overlapping view of itself", inputs = {P.randn({6, 6})},
            fn = function(x) x:add_(x:t()); return x end})
for _, u in ipairs(unary) do
  local name, make = u[1], u[2] or function(s) return P.randn(s) * 2 end
  P.check(T, {name = name .. "_ in place, contiguous and a view", inputs = {make({7, 33})},
              fn = function(x)
                local v = x:narrow(2, 3, 20)
                v[name .. "_"](v)
                return x
              end})
end
P.check(T, {name = "logical_not_ and clamp_", inputs = {P.randn({7, 33}):gt(0), P.randn({9, 17})},
            fn = function(b, x) b:logical_not_(); x:t():clamp_(-0.3, 0.4); return b, x end})
P.check(T, {name = "masked_fill_, fill_, zero_", inputs = {P.randn({7, 33}), P.randn({33})},
            fn = function(x, m)
              x:masked_fill_(m:gt(0), 3.5)
              local y = x:clone()
              y:narrow(1, 2, 3):fill_(-2)
              local z = x:clone():t()
              z:zero_()
              return x, y, z
            end})

-- ---- gradient accumulation ----------------------------------------------------------------

P.check(T, {name = "a leaf used three times accumulates its gradient", inputs = {P.randn({7, 33}), P.randn({33})},
            fn = function(x, b) return x * x + x:exp() * b + x end, grad = true})

local function grads_twice(x, dtype)
  local leaf = x:detach():to(dtype)
  leaf.requires_grad = true
  local w = sere.tensor({1.5, -2, 0.25}, {dtype = "f32"})
  if x:device() == "cuda" then w = w:cuda() end
  local first, second = (leaf:float() * w):sum(), (leaf:float():exp() * w):sum()
  first:backward()
  second:backward()
  return leaf.grad
end

if P.available then
  T.test("cuda parity: .grad accumulates over two backward calls (f32 and a bf16 leaf)", function()
    local x = P.randn({4, 3})
    for _, d in ipairs({"f32", "bf16"}) do
      local ref, got = grads_twice(x, d), grads_twice(x:cuda(), d)
      T.eq(got:device(), "cuda")
      T.eq(got:dtype(), d)
      local tol = d == "bf16" and 1e-2 or 1e-6
      T.close(got:cpu():float(), ref:float(), tol, tol, "grad " .. d)
    end
  end)
else
  T.skip("cuda parity: .grad accumulates over two backward calls (f32 and a bf16 leaf)", P.reason)
end

-- ---- misuse ----------------------------------------------------------------------------

if P.available then
  T.test("cuda elementwise: tensors on two devices are refused naming the op", function()
    local g, c = P.randn({3, 4}):cuda(), P.randn({3, 4})
    T.raises(function() return g + c end, "add: expected all tensors on one device")
    T.raises(function() return c:mul(g) end, "mul: expected all tensors on one device")
    T.raises(function() return g:lt(c) end, "lt: expected all tensors on one device")
    T.raises(function() return g:gt(0):logical_and(c:gt(0)) end, "logical_and: expected all tensors")
    T.raises(function() return sere.where(c:gt(0), g, g) end, "where: expected all tensors")
    T.raises(function() return g:masked_fill(c:gt(0), 1) end, "masked_fill: expected all tensors")
    T.raises(function() return c:add_(g) end, "add_: expected all tensors")
    T.raises(function() return g:clone():add_(c) end, "add_: expected all tensors")
    T.raises(function() return c:clone():masked_fill_(g:gt(0), 1) end, "masked_fill_: expected all tensors")
    -- a 0-dim cpu tensor is a scalar for a cuda op, unless it wants a gradient
    T.eq((g + sere.tensor(2)):device(), "cuda")
    T.close((g * sere.tensor(2)):cpu(), g:cpu() * 2, 0, 0)
    local s = sere.tensor(2.0)
    s.requires_grad = true
    T.raises(function() return g + s end, "add: expected all tensors on one device")
    T.raises(function() return sere.tensor(1.5):add_(g:sum()) end, "add_: expected all tensors")
  end)
else
  T.skip("cuda elementwise: tensors on two devices are refused naming the op", P.reason)
end

T.finish()
