-- test_layernorm.lua — sere.layer_norm: values and gradients (x, weight,
-- bias) against PyTorch (tests/reference/ops_layernorm.py, float64
-- references), non-contiguous and bf16 inputs, rows far from zero, the
-- parallel path, finite-difference gradient checks, and errors.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

local ref, meta = sere.io.load("tests/data/ops/layernorm.safetensors")
-- f32 against float64: a few ulp per element, and the weight/bias gradients
-- sum over rows. Case "far" (mean 100, std 0.1) meets the same tolerance:
-- with the mean rounded to f32 (ulp(100) / 2 = 3.8e-6, 3.8e-5 of a standard
-- deviation) it would not; with E[x^2] - mean^2 it would be off by percents.
local ATOL, RTOL = 1e-5, 1e-5

local leaf = T.leaf

-- layer_norm of case c with x transformed by `view` (identity by default),
-- back-propagating c.g; returns y and the leaves.
local function run_case(c, view)
  local x, w, b = leaf(ref[c .. ".x"]), ref[c .. ".w"] and leaf(ref[c .. ".w"]), ref[c .. ".b"] and leaf(ref[c .. ".b"])
  local xin = view and view(x) or x
  local y = sere.layer_norm(xin, w, b, tonumber(meta[c .. ".eps"]))
  y:backward(ref[c .. ".g"])
  return y, x, w, b
end

local function check_case(c, y, x, w, b)
  T.close(y, ref[c .. ".y"], ATOL, RTOL, c .. ": y")
  T.close(x.grad, ref[c .. ".gx"], ATOL, RTOL, c .. ": grad x")
  if w then
    T.close(w.grad, ref[c .. ".gw"], ATOL, RTOL, c .. ": grad weight")
    T.close(b.grad, ref[c .. ".gb"], ATOL, RTOL, c .. ": grad bias")
  end
end

T.test("matches PyTorch: values and gradients of x, weight, bias", function()
  for _, c in ipairs({"small", "odd", "plain"}) do check_case(c, run_case(c)) end
end)

T.test("rows far from zero stay accurate (shifted two-pass statistics)", function()
  check_case("far", run_case("far"))
end)

T.test("non-contiguous x, weight and bias", function()
  -- the same values through a transposed copy: x^T^T is not contiguous
  local y, x, w, b = run_case("small", function(a) return a:transpose(1, 3):contiguous():transpose(1, 3) end)
  T.eq(y:is_contiguous(), true)
  check_case("small", y, x, w, b)
  -- weight and bias with stride 2
  local w2 = sere.stack({ref["odd.w"], ref["odd.w"]}, 2):select(2, 1)
  local b2 = sere.stack({ref["odd.b"], ref["odd.b"]}, 2):select(2, 2)
  T.eq(w2:stride()[1], 2)
  T.close(sere.layer_norm(ref["odd.x"], w2, b2, 1e-6), ref["odd.y"], ATOL, RTOL, "strided weight")
end)

T.test("weight only, bias only, defaults", function()
  local x, w, b = ref["small.x"], ref["small.w"], ref["small.b"]
  local full = sere.layer_norm(x, nil, nil, 1e-5)
  T.close(sere.layer_norm(x, w, nil, 1e-5), full * w, 1e-6, 1e-6, "weight only")
  T.close(sere.layer_norm(x, nil, b, 1e-5), full + b, 1e-6, 1e-6, "bias only")
  T.eq(sere.layer_norm(x), full, "eps defaults to 1e-5")
  -- an independent check in Lua of one row
  local row = x:select(1, 2):select(1, 3):totable()
  local m, v = 0, 0
  for _, e in ipairs(row) do m = m + e / #row end
  for _, e in ipairs(row) do v = v + (e - m) ^ 2 / #row end
  local got = full:select(1, 2):select(1, 3):totable()
  for j = 1, #row do T.close(got[j], (row[j] - m) / math.sqrt(v + 1e-5), 1e-6, 1e-5) end
end)

T.test("gradcheck: x, weight and bias; odd sizes; transposed and narrowed x", function()
  local function rnd(...) return leaf(sere.randn(...)) end
  gradcheck(function(x, w, b) return sere.layer_norm(x, w, b, 1e-5) end, {rnd(3, 4, 6), rnd(6), rnd(6)})
  gradcheck(function(x, w, b) return sere.layer_norm(x, w, b, 1e-6) end, {rnd(2, 5, 7), rnd(7), rnd(7)})
  gradcheck(function(x) return sere.layer_norm(x) end, {rnd(5, 3)})
  gradcheck(function(x, w) return sere.layer_norm(x:t(), w, nil) end, {rnd(6, 4), rnd(6)})
  gradcheck(function(x, b) return sere.layer_norm(x:narrow(2, 2, 5), nil, b) end, {rnd(3, 8), rnd(5)})
  gradcheck(function(x, w, b) return sere.layer_norm(x, w, b) end, {rnd(9), rnd(9), rnd(9)})
end)

T.test("only the inputs that require grad get one", function()
  local x, w = ref["small.x"], leaf(ref["small.w"])
  sere.layer_norm(x, w, ref["small.b"]):backward(ref["small.g"])
  T.close(w.grad, ref["small.gw"], ATOL, RTOL)
  local xl = leaf(x)
  sere.layer_norm(xl, ref["small.w"], ref["small.b"]):backward(ref["small.g"])
  T.close(xl.grad, ref["small.gx"], ATOL, RTOL)
end)

T.test("bf16 in, bf16 out, computed in f32", function()
  local x, w, b = ref["odd.x"]:to("bf16"), ref["odd.w"], ref["odd.b"]
  local y = sere.layer_norm(x, w, b, 1e-6)
  T.eq(y:dtype(), "bf16")
  T.eq(y, sere.layer_norm(x:float(), w, b, 1e-6):to("bf16"))
  local xl, wl = leaf(x), leaf(w:to("bf16"))
  sere.layer_norm(xl, wl, b, 1e-6):sum():backward()
  T.eq(xl.grad:dtype(), "bf16"); T.eq(wl.grad:dtype(), "bf16")
end)

T.test("large inputs take the parallel path and match row by row", function()
  local x, w, b = sere.randn(257, 160) * 3 + 1, sere.randn(160), sere.randn(160) -- 41120 elements
  local g = sere.randn(257, 160)
  local xl, wl, bl = leaf(x), leaf(w), leaf(b)
  local y = sere.layer_norm(xl, wl, bl, 1e-6)
  y:backward(g)
  local gw, gb = sere.zeros(160), sere.zeros(160)
  for r = 1, 257, 32 do
    local n = math.min(32, 258 - r)
    local xr, wr, br = leaf(x:narrow(1, r, n)), leaf(w), leaf(b)
    local yr = sere.layer_norm(xr, wr, br, 1e-6)
    yr:backward(g:narrow(1, r, n))
    T.eq(y:narrow(1, r, n), yr, "rows " .. r)
    T.eq(xl.grad:narrow(1, r, n), xr.grad, "grad rows " .. r)
    gw, gb = gw + wr.grad, gb + br.grad
  end
  T.close(wl.grad, gw, 1e-4, 1e-5, "grad weight")
  T.close(bl.grad, gb, 1e-4, 1e-5, "grad bias")
end)

T.test("errors name the op and the shapes", function()
  local x = sere.randn(2, 3)
  T.raises(function() sere.layer_norm(sere.tensor({{1, 2}})) end, "layer_norm: expects a float tensor, got i64 of shape %[1, 2%]")
  T.raises(function() sere.layer_norm(sere.tensor(1.0)) end, "layer_norm: expects a tensor with at least 1 dim")
  T.raises(function() sere.layer_norm(x, sere.ones(4)) end,
    "layer_norm: weight of shape %[4%] does not match the last dim of input %[2, 3%]")
  T.raises(function() sere.layer_norm(x, nil, sere.ones(1, 3)) end, "layer_norm: bias of shape %[1, 3%]")
  T.raises(function() sere.layer_norm(x, sere.tensor({1, 2, 3})) end, "layer_norm: weight must be a float tensor, got i64")
  T.raises(function() sere.layer_norm(x, nil, nil, -1) end, "layer_norm: eps must be >= 0")
  T.raises(function() sere.layer_norm(x, "w") end, "layer_norm: argument #2 %(weight%): expected a tensor or nil, got string")
  T.raises(function() sere.layer_norm(x, nil, nil, "big") end, "number expected")
  T.eq(sere.layer_norm(sere.zeros(0, 3)):shape()[1], 0)
end)

T.finish()
