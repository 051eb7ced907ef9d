-- test_normalize.lua — sere.normalize / x:normalize (F.normalize with p = 2):
-- values and gradients against PyTorch (tests/reference/ops_normalize.py,
-- float64 references) along the last, a middle and the first dim and with
-- norms below eps; lines wider than one column slab against Lua loops;
-- finite-difference gradient checks; bf16; errors.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

local ref, meta = sere.io.load("tests/data/ops/normalize.safetensors")
-- f32 against float64 references of magnitude <= 1 (y) and O(1) (grad).
local ATOL, RTOL = 1e-6, 1e-5

local leaf = T.leaf

local function run(x, dim, eps, g)
  local xl = leaf(x)
  local y = sere.normalize(xl, dim, eps)
  y:backward(g)
  return y, xl.grad
end

T.test("matches PyTorch along the last, a middle and the first dim, and below eps", function()
  for _, c in ipairs({"last", "middle", "first", "clamped"}) do
    local y, gx = run(ref[c .. ".x"], tonumber(meta[c .. ".dim"]), tonumber(meta[c .. ".eps"]), ref[c .. ".g"])
    T.close(y, ref[c .. ".y"], ATOL, RTOL, c .. ": y")
    T.close(gx, ref[c .. ".gx"], ATOL, RTOL, c .. ": grad")
  end
end)

T.test("defaults (dim -1, eps 1e-12), method form, non-contiguous input", function()
  local x = ref["last.x"]
  T.eq(sere.normalize(x), sere.normalize(x, -1, 1e-12))
  T.eq(x:normalize(), sere.normalize(x, 2))
  T.eq(x:normalize(-1, 1e-12), sere.normalize(x))
  local xt = x:t():contiguous():t() -- same values, transposed strides
  T.eq(xt:is_contiguous(), false)
  T.close(sere.normalize(xt), ref["last.y"], ATOL, RTOL)
  local y, gx = run(ref["middle.x"]:transpose(1, 3):contiguous():transpose(1, 3), 2, 1e-12, ref["middle.g"])
  T.close(y, ref["middle.y"], ATOL, RTOL); T.close(gx, ref["middle.gx"], ATOL, RTOL)
end)

-- Lua reference: y and the gradient of sum(y * g) along dim d of a 3-D x.
local function lua_reference(x, g, d, eps)
  local xs, gs, sh = x:totable(), g:totable(), x:shape()
  local y, gx = sere.zeros(sh):totable(), sere.zeros(sh):totable()
  local other = {}
  for k = 1, 3 do if k ~= d then other[#other + 1] = k end end
  for i = 1, sh[other[1]] do
    for j = 1, sh[other[2]] do
      local function at(k) local ix = {}; ix[d] = k; ix[other[1]] = i; ix[other[2]] = j; return ix end
      local n2, dot = 0, 0
      for k = 1, sh[d] do
        local ix = at(k)
        local v = xs[ix[1]][ix[2]][ix[3]]
        n2 = n2 + v * v
        dot = dot + v * gs[ix[1]][ix[2]][ix[3]]
      end
      local n = math.sqrt(n2)
      local den = math.max(n, eps)
      for k = 1, sh[d] do
        local ix = at(k)
        local v, gv = xs[ix[1]][ix[2]][ix[3]], gs[ix[1]][ix[2]][ix[3]]
        y[ix[1]][ix[2]][ix[3]] = v / den
        gx[ix[1]][ix[2]][ix[3]] = gv / den - (n >= eps and v * dot / (den * den * n) or 0)
      end
    end
  end
  return sere.tensor(y), sere.tensor(gx)
end

T.test("lines over several column slabs, and the parallel path, match Lua loops", function()
  for _, case in ipairs({{{2, 3, 300}, 2}, {{5, 270, 2}, 1}, {{4, 60, 150}, 2}, {{3, 4, 5}, 3}}) do
    local x, g = sere.randn(case[1]), sere.randn(case[1])
    local y, gx = run(x, case[2], 1e-12, g)
    local ry, rgx = lua_reference(x, g, case[2], 1e-12)
    T.close(y, ry, ATOL, RTOL, "y")
    T.close(gx, rgx, ATOL, RTOL, "grad")
  end
end)

T.test("zero lines: y = 0 and grad = g / eps", function()
  local x = sere.zeros(2, 3)
  local g = sere.randn(2, 3)
  local y, gx = run(x, -1, 0.5, g)
  T.eq(y, sere.zeros(2, 3))
  T.close(gx, g * 2, 0, 1e-6)
end)

T.test("gradcheck: dims, clamped lines, non-contiguous inputs", function()
  local function rnd(...) return leaf(sere.randn(...)) end
  gradcheck(function(x) return sere.normalize(x) end, {rnd(3, 7)})
  gradcheck(function(x) return sere.normalize(x, 2) end, {rnd(2, 5, 3)})
  gradcheck(function(x) return sere.normalize(x, 1) end, {rnd(4, 3)})
  gradcheck(function(x) return x:t():normalize(-1) end, {rnd(5, 4)})
  gradcheck(function(x) return x:narrow(2, 2, 4):normalize(1) end, {rnd(3, 6)})
  -- norms well below eps = 2: the denominator is the constant eps
  gradcheck(function(x) return sere.normalize(x, -1, 2.0) end, {leaf(sere.randn(3, 4) * 0.2)})
  gradcheck(function(x) return sere.normalize(x, -1) end, {rnd(9)})
end)

T.test("bf16 in, bf16 out, computed in f32", function()
  local x = ref["middle.x"]:to("bf16")
  local y = sere.normalize(x, 2)
  T.eq(y:dtype(), "bf16")
  T.eq(y, sere.normalize(x:float(), 2):to("bf16"))
  local xl = leaf(x)
  sere.normalize(xl, 2):sum():backward()
  T.eq(xl.grad:dtype(), "bf16")
end)

T.test("errors name the op, the dim and the dtype", function()
  local x = sere.randn(2, 3)
  T.raises(function() sere.normalize(sere.tensor({1, 2})) end, "normalize: expects a float tensor, got i64 of shape %[2%]")
  T.raises(function() sere.normalize(x, 3) end, "normalize: dim 3 out of range for a tensor with 2 dims")
  T.raises(function() x:normalize(0) end, "normalize: dims are 1%-based")
  T.raises(function() sere.normalize(x, -1, -1e-3) end, "normalize: eps must be >= 0")
  T.raises(function() sere.normalize(x, "a") end, "normalize: argument #2: expected an integer dim")
  T.eq(sere.normalize(sere.zeros(0, 4)):shape()[1], 0)
  T.eq(sere.normalize(sere.zeros(3, 0), 2):shape()[2], 0)
  T.close(sere.normalize(sere.tensor(-3.0)):item(), -1, 0, 0)
end)

T.finish()
