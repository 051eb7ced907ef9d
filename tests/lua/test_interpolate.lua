-- test_interpolate.lua — sere.interpolate_bicubic (ops/interpolate.c):
-- values and gradients against PyTorch's interpolate(mode='bicubic',
-- align_corners=False, scale_factor=(sy, sx)) (reference data from
-- tests/reference/ops_spatial.py, including the positional-embedding cases
-- 14 -> 6 and 14 -> 14 with the (n + 0.1) / 14 scale factors) and against a
-- direct Lua transcription of method.md 2.4; gradient checks (up, down,
-- non-square, non-contiguous), bf16, and misuse.
--
-- Tolerance against PyTorch: 1e-5 absolute + 1e-5 relative (both compute
-- the tap weights in f32; sums of at most 16 products).
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

local TOL = 1e-5
local ref, meta = sere.io.load("tests/data/ops/interpolate.safetensors")

local function rnd(...) local t = sere.randn(...); t.requires_grad = true; return t end

-- method.md 2.4 in Lua doubles: output index j reads src = (j + 0.5) / s - 0.5,
-- taps floor(src) - 1 .. floor(src) + 2 clamped to [0, n - 1], A = -0.75.
local function cubic(t)
  local A = -0.75
  t = math.abs(t)
  if t <= 1 then return (A + 2) * t ^ 3 - (A + 3) * t ^ 2 + 1 end
  if t < 2 then return A * t ^ 3 - 5 * A * t ^ 2 + 8 * A * t - 4 * A end
  return 0
end

local function taps(n, s, j) -- 0-based output index -> {{1-based source index, weight} x 4}
  local src = (j + 0.5) / s - 0.5
  local f = math.floor(src)
  local out = {}
  for k = -1, 2 do
    local i = math.min(math.max(f + k, 0), n - 1)
    out[#out + 1] = {i + 1, cubic(src - (f + k))}
  end
  return out
end

local function bicubic_lua(x, sy, sx)
  local s = x:shape()
  local xt = x:totable()
  local ho, wo = math.floor(s[3] * sy), math.floor(s[4] * sx)
  local y = {}
  for b = 1, s[1] do
    y[b] = {}
    for c = 1, s[2] do
      y[b][c] = {}
      for i = 1, ho do
        y[b][c][i] = {}
        for j = 1, wo do
          local v = 0
          for _, ty in ipairs(taps(s[3], sy, i - 1)) do
            for _, tx in ipairs(taps(s[4], sx, j - 1)) do v = v + ty[2] * tx[2] * xt[b][c][ty[1]][tx[1]] end
          end
          y[b][c][i][j] = v
        end
      end
    end
  end
  return sere.tensor(y)
end

local function scales(case)
  local sy, sx = meta[case .. ".scale"]:match("([^,]+),([^,]+)")
  return tonumber(sy), tonumber(sx)
end

-- For pos14 (equal input and output sizes) the reference gradient is the true
-- transpose of PyTorch's forward map: PyTorch 1.13's own backward copies the
-- gradient there (see ops_spatial.py).
T.test("matches PyTorch bicubic interpolation: values and gradients", function()
  for _, c in ipairs({"pos6", "pos14", "up", "down", "mixed"}) do
    local sy, sx = scales(c)
    local x = ref[c .. ".x"]:clone()
    x.requires_grad = true
    local y = sere.interpolate_bicubic(x, sy, sx)
    T.close(y, ref[c .. ".y"], TOL, TOL, c .. ": y")
    y:backward(ref[c .. ".gy"])
    T.close(x.grad, ref[c .. ".gx"], TOL, TOL, c .. ": dx")
  end
end)

T.test("positional-embedding scale factors: 14 -> 6 and 14 -> 14 as in method.md 2.4", function()
  local x = sere.randn(1, 5, 14, 14)
  local y6 = sere.interpolate_bicubic(x, 6.1 / 14, 6.1 / 14)
  T.eq(y6:shape()[3], 6); T.eq(y6:shape()[4], 6)
  T.close(y6, bicubic_lua(x, 6.1 / 14, 6.1 / 14), 1e-5, 1e-5, "14 -> 6")
  -- the +0.1 makes a 14 -> 14 resampling a slight shift, not the identity
  local y14 = sere.interpolate_bicubic(x, 14.1 / 14)
  T.eq(y14:shape()[3], 14)
  T.close(y14, bicubic_lua(x, 14.1 / 14, 14.1 / 14), 1e-5, 1e-5, "14 -> 14")
  T.raises(function() T.close(y14, x, 1e-3, 1e-3) end, "not close")
  -- scale 1 is exactly the identity
  T.eq(sere.interpolate_bicubic(x, 1, 1), x)
end)

T.test("matches a direct transcription of the method, non-square and non-contiguous", function()
  local x = sere.randn(2, 3, 9, 5):transpose(3, 4) -- [2, 3, 5, 9]
  T.eq(x:is_contiguous(), false)
  for _, s in ipairs({{2.5, 1.3}, {0.5, 0.75}, {1.7, 0.3}, {3, 3}}) do
    T.close(sere.interpolate_bicubic(x, s[1], s[2]), bicubic_lua(x, s[1], s[2]), 1e-5, 1e-5,
      string.format("scale (%g, %g)", s[1], s[2]))
  end
end)

T.test("gradcheck: up, down, non-square, non-contiguous", function()
  for _, c in ipairs({{{1, 2, 5, 6}, 2.5, 1.5}, {{2, 1, 9, 7}, 0.5, 0.7}, {{1, 3, 14, 14}, 6.1 / 14, 6.1 / 14},
      {{1, 1, 3, 8}, 3.0, 0.3}}) do
    gradcheck(function(x) return sere.interpolate_bicubic(x, c[2], c[3]) end, {rnd(c[1])})
  end
  gradcheck(function(x) return sere.interpolate_bicubic(x:permute(1, 4, 2, 3), 1.6, 0.8) end, {rnd(2, 5, 4, 3)})
end)

T.test("bf16 is computed in f32 and returned as bf16", function()
  local x = sere.randn(1, 2, 6, 6):to("bf16")
  local y = sere.interpolate_bicubic(x, 1.5, 0.5)
  T.eq(y:dtype(), "bf16")
  T.close(y, bicubic_lua(x:float(), 1.5, 0.5), 0.03, 1e-2, "bf16")
  x.requires_grad = true
  sere.interpolate_bicubic(x, 1.5, 0.5):sum():backward()
  T.eq(x.grad:dtype(), "bf16")
end)

T.test("method form; sx defaults to sy", function()
  local x = sere.randn(1, 1, 4, 4)
  T.eq(x:interpolate_bicubic(2, 0.5), sere.interpolate_bicubic(x, 2, 0.5))
  T.eq(x:interpolate_bicubic(2):shape()[4], 8)
end)

T.test("misuse raises errors naming the op and the shapes", function()
  local x = sere.randn(1, 2, 14, 14)
  T.raises(function() sere.interpolate_bicubic(sere.randn(2, 14, 14), 0.5) end,
    "interpolate_bicubic: x must be a float %[B, C, H, W%] tensor, got f32 of shape %[2, 14, 14%]")
  T.raises(function() sere.interpolate_bicubic(x:long(), 0.5) end, "got i64 of shape")
  T.raises(function() sere.interpolate_bicubic(x, 0) end, "scale factors must be positive and finite")
  T.raises(function() sere.interpolate_bicubic(x, 1, -2) end, "must be positive")
  T.raises(function() sere.interpolate_bicubic(x, 0 / 0) end, "must be positive")
  T.raises(function() sere.interpolate_bicubic(x, math.huge) end, "finite")
  T.raises(function() sere.interpolate_bicubic(x, 0.05, 1) end, "give a 0 x 14 output for x of shape %[1, 2, 14, 14%]")
  T.raises(function() sere.interpolate_bicubic(x) end, "argument #2 %(sy%): expected a number")
  T.raises(function() sere.interpolate_bicubic(x, 1, "a") end, "argument #3 %(sx%): expected a number")
end)

T.finish()
