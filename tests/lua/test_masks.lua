-- test_masks.lua — the masked-image-modelling masks of method.md 5.7:
-- the per-crop ratio (half unmasked, the rest uniform in [0.1, 0.5]), the
-- block generator's masked counts (never above the target, and the same
-- mean shortfall as an independent Python run of iBOT's algorithm), the
-- "rand" shape, reproducibility and argument errors.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"

local function count(m) return m:to("i32"):sum():item() end

-- |got - want| within k standard errors
local function within(got, want, se, what)
  if math.abs(got - want) > se then error(string.format("%s: %.4f, expected %.4f +- %.4f", what, got, want, se)) end
end

T.test("ratio per crop: half unmasked, the rest uniform in [0.1, 0.5]; never above the target", function()
  local g, n = sere.Generator(21), 20000
  local ratio = {mean = {0, 0.3}, var = {0, 0.2}}
  local zeros, bins = 0, {0, 0, 0, 0}
  for _ = 1, n do
    local m, r = sere.augment_block_mask(14, 14, ratio, g)
    local c = count(m)
    assert(c <= r * 196, "masked cells above the target")
    if r == 0 then
      zeros = zeros + 1
      assert(c == 0)
    else
      assert(r >= 0.1 and r < 0.5, "ratio in [0.1, 0.5)")
      local b = math.floor((r - 0.1) / 0.1) + 1
      bins[b] = bins[b] + 1
      assert(c > 0 and c >= r * 196 - 16, "a shortfall larger than one minimum block")
    end
  end
  within(zeros / n, 0.5, 5 * math.sqrt(0.25 / n), "unmasked fraction")
  local nz = n - zeros
  for b = 1, 4 do within(bins[b] / nz, 0.25, 5 * math.sqrt(0.25 * 0.75 / nz), "ratio bin " .. b) end
end)

-- Mean and sd of the masked count on 14 x 14 over 20000 masks from an
-- independent Python implementation of iBOT's generator (Python's random,
-- seed 0): the shortfall below ratio * 196 is that of the algorithm itself.
local PYTHON = {[0.1] = {17.569, 1.506}, [0.2] = {38.171, 1.451}, [0.3] = {57.262, 1.203},
                [0.4] = {77.481, 0.954}, [0.5] = {97.532, 0.916}}

T.test("block masks: mean masked count per ratio matches iBOT's algorithm", function()
  local g, n = sere.Generator(4), 20000
  for r, ref in pairs(PYTHON) do
    local s = 0
    for _ = 1, n do
      local c = count(sere.augment_block_mask(14, 14, r, g))
      assert(c <= r * 196)
      s = s + c
    end
    -- both means carry sampling error: 5 standard errors of their difference
    within(s / n, ref[1], 5 * ref[2] * math.sqrt(2 / n), "mean count at ratio " .. r)
  end
end)

T.test("block masks are blocks, not scattered cells", function()
  local g = sere.Generator(8)
  for _ = 1, 200 do
    -- at ratio 0.1 (target 19.6 cells) a first block of area about 16 does
    -- most of the work; the remainder (< 5 cells) may land anywhere
    local m = sere.augment_block_mask(14, 14, 0.1, g):totable()
    local isolated, n = 0, 0
    for i = 1, 14 do
      for j = 1, 14 do
        if m[i][j] then
          n = n + 1
          local nb = (m[i - 1] and m[i - 1][j]) or (m[i + 1] and m[i + 1][j]) or m[i][j - 1] or m[i][j + 1]
          if not nb then isolated = isolated + 1 end
        end
      end
    end
    assert(n >= 12 and n <= 19, "masked count " .. n)
    assert(isolated <= 4, "masked cells are scattered")
  end
end)

T.test("rand shape: exactly floor(ratio * cells), every cell equally likely", function()
  local g, n = sere.Generator(2), 4000
  local freq = sere.zeros({6, 7})
  for _ = 1, n do
    local m = sere.augment_block_mask(6, 7, 0.3, g, "rand")
    T.eq(count(m), 12) -- floor(0.3 * 42)
    freq = freq + m:to("f32")
  end
  local p = 12 / 42
  local se = math.sqrt(p * (1 - p) / n)
  T.eq(math.abs((freq / n - p):max():item()) <= 5 * se, true, "max cell frequency")
  T.eq(math.abs((freq / n - p):min():item()) <= 5 * se, true, "min cell frequency")
end)

T.test("same stream, same mask; ratio 0 masks nothing; local 6 x 6 masks", function()
  local s = {seed = 3, epoch = 1, sample = 17, crop = 0}
  local a, ra = sere.augment_block_mask(14, 14, {mean = {0, 0.3}, var = {0, 0.2}}, s)
  local b, rb = sere.augment_block_mask(14, 14, {mean = {0, 0.3}, var = {0, 0.2}}, s)
  T.eq(ra, rb)
  T.eq((a:to("i32") - b:to("i32")):abs():sum():item(), 0, "identical masks")
  T.eq(a:dtype(), "bool")
  T.eq(count(sere.augment_block_mask(14, 14, 0, sere.Generator(1))), 0)
  local m = sere.augment_block_mask(6, 6, 0.5, sere.Generator(1))
  T.eq(m:shape()[1], 6)
  assert(count(m) <= 18)
  -- a scalar (mean, var) pair: U(0.2, 0.4)
  local g = sere.Generator(9)
  for _ = 1, 100 do
    local _, r = sere.augment_block_mask(14, 14, {mean = 0.3, var = 0.1}, g)
    assert(r >= 0.2 and r < 0.4)
  end
end)

T.test("misuse raises errors naming the op", function()
  local g = sere.Generator(1)
  T.raises(function() sere.augment_block_mask(0, 14, 0.3, g) end, "augment_block_mask: h must be in")
  T.raises(function() sere.augment_block_mask(14, 14, 1.5, g) end, "ratio must be in %[0, 1%]")
  T.raises(function() sere.augment_block_mask(14, 14, {mean = {0, 0.3}, var = {0}}, g) end, "2 entries but ratio.var has 1")
  T.raises(function() sere.augment_block_mask(14, 14, {mean = 0.1, var = 0.2}, g) end, "needs 0 <= var <= mean")
  T.raises(function() sere.augment_block_mask(14, 14, 0.3, g, "ring") end, "invalid option 'ring'")
  T.raises(function() sere.augment_block_mask(14, 14, 0.3, nil) end, "expected a sere.Generator")
end)

T.finish()
