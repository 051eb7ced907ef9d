-- test_activation.lua — GELU (exact erf form) and ReLU: values and
-- gradients against PyTorch (tests/reference/ops_activation.py, float64
-- references), GELU's accuracy in ulp over [-13, 13], special values,
-- finite-difference gradient checks (odd sizes, transposed and narrowed
-- inputs), bf16, the parallel path, and errors.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

local ref = sere.io.load("tests/data/ops/activation.safetensors")
-- f32 against a float64 reference: GELU and its derivative are documented
-- within 3 ulp (activation.c), i.e. a relative error of at most 3 * 2^-23.
local ULP3 = 3 * 2 ^ -23

local leaf = T.leaf

-- Runs fn on a copy of x that requires grad and back-propagates g.
local function run(fn, x, g)
  local xl = leaf(x)
  local y = fn(xl)
  y:backward(g)
  return y, xl.grad
end

T.test("gelu matches PyTorch: values and gradient", function()
  local y, gx = run(sere.gelu, ref["gelu.x"], ref["gelu.g"])
  T.close(y, ref["gelu.y"], 1e-30, ULP3, "gelu")
  -- the gradient is g * gelu'(x): 3 ulp of gelu' plus the product's rounding
  T.close(gx, ref["gelu.gx"], 1e-8, 4 * 2 ^ -23, "gelu grad")
  local y2 = ref["gelu.x"]:gelu()
  T.eq(y2, y, "method form")
end)

T.test("gelu and its derivative are within 3 ulp over [-13, 13]", function()
  local y, d = run(sere.gelu, ref["sweep.x"], sere.ones(512))
  T.close(y, ref["sweep.y"], 1e-37, ULP3, "gelu sweep")
  -- gelu' crosses zero at -0.75: 3 ulp relative, or 2e-9 absolute there
  T.close(d, ref["sweep.d"], 2e-9, 3 * 2 ^ -23, "gelu' sweep")
end)

T.test("gelu special values", function()
  local x = sere.tensor({0, -0.0, 1 / 0, -1 / 0, 0 / 0, -20, 20, 1e-30, -1e-30, -13.2, 13.2})
  local y = sere.gelu(x):totable()
  T.eq(y[1], 0); T.eq(1 / y[2], -1 / 0, "gelu(-0) is -0")
  T.eq(y[3], 1 / 0)
  T.eq(y[4] ~= y[4], true, "gelu(-inf) is NaN, as in torch (-inf * 0)")
  T.eq(y[5] ~= y[5], true, "NaN propagates")
  T.eq(y[6], 0); T.eq(y[7], 20)
  T.close(y[8], 5e-31, 0, 1e-6); T.close(y[9], -5e-31, 0, 1e-6)
  -- -13.2 * Phi(-13.2): 6.26e-39 is below the normal range, so -0 or that
  T.eq(math.abs(y[10]) < 1e-38, true)
  T.eq(y[11], 13.199999809265137)
end)

T.test("relu matches PyTorch, with relu'(0) = 0", function()
  local y, gx = run(sere.relu, ref["relu.x"], ref["relu.g"])
  T.eq(y, ref["relu.y"], "relu")
  T.eq(gx, ref["relu.gx"], "relu grad")
  T.eq(ref["relu.x"]:relu(), y, "method form")
  local n = sere.relu(sere.tensor({0 / 0, -1, 2})):totable()
  T.eq(n[1] ~= n[1], true, "NaN propagates"); T.eq(n[2], 0); T.eq(n[3], 2)
end)

-- Inputs kept at least 0.05 away from relu's kink (gradcheck's step is 1e-3).
local function away_from_zero(shape)
  local x = sere.randn(shape)
  return (x + x:sign() * 0.05):detach()
end

T.test("gradcheck: gelu and relu, odd sizes and non-contiguous inputs", function()
  for _, f in ipairs({sere.gelu, sere.relu}) do
    gradcheck(f, {leaf(away_from_zero({3, 5}) * 2)})
    gradcheck(f, {leaf(away_from_zero({7}))})
    gradcheck(function(a) return f(a:transpose(1, 2)) end, {leaf(away_from_zero({4, 3}))})
    gradcheck(function(a) return f(a:narrow(2, 2, 3)) end, {leaf(away_from_zero({2, 6, 3}))})
    gradcheck(function(a) return f(a) * 2 end, {leaf(away_from_zero({2, 3, 2}))})
  end
end)

T.test("bf16 in, bf16 out, computed in f32", function()
  local x = (sere.randn(5, 8) * 2):to("bf16")
  for _, f in ipairs({sere.gelu, sere.relu}) do
    local y = f(x)
    T.eq(y:dtype(), "bf16")
    T.eq(y, f(x:float()):to("bf16"))
    local xl = leaf(x)
    f(xl):sum():backward()
    T.eq(xl.grad:dtype(), "bf16")
  end
end)

T.test("non-contiguous inputs match their contiguous copies", function()
  local x = sere.randn(6, 5)
  T.eq(sere.gelu(x:t()), sere.gelu(x:t():contiguous()))
  T.eq(sere.relu(x:narrow(1, 2, 3)), sere.relu(x:narrow(1, 2, 3):contiguous()))
end)

T.test("large tensors take the parallel path and match small chunks", function()
  local x = sere.randn(200, 300) * 3 -- 60000 elements
  local g = sere.randn(200, 300)
  local y, gx = run(sere.gelu, x, g)
  for r = 1, 200, 67 do
    local yr, gr = run(sere.gelu, x:narrow(1, r, 1), g:narrow(1, r, 1))
    T.eq(y:narrow(1, r, 1), yr)
    T.eq(gx:narrow(1, r, 1), gr)
  end
  T.eq(sere.relu(x):narrow(1, 100, 2), sere.relu(x:narrow(1, 100, 2)))
end)

T.test("errors name the op and the dtype", function()
  T.raises(function() sere.gelu(sere.tensor({1, 2})) end, "gelu: expects a float tensor, got i64 of shape %[2%]")
  T.raises(function() sere.relu(sere.tensor({true})) end, "relu: expects a float tensor, got bool")
  T.raises(function() sere.gelu("x") end, "gelu: argument #1: expected a tensor, got string")
  T.raises(function() sere.relu() end, "relu: argument #1: expected a tensor")
end)

T.test("empty and 0-dim tensors", function()
  T.eq(sere.gelu(sere.zeros(0, 3)):shape()[1], 0)
  T.close(sere.gelu(sere.tensor(1.0)):item(), 0.8413447460685429, 0, ULP3)
  T.eq(sere.relu(sere.tensor(-2.0)):item(), 0)
end)

T.finish()
