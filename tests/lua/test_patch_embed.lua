-- test_patch_embed.lua — sere.patch_embed (ops/patch_embed.c): values and
-- gradients against PyTorch's conv2d(x, w, b, stride=p) (reference data from
-- tests/reference/ops_spatial.py) and against a direct Lua loop, gradient
-- checks of x, weight and bias (odd sizes, floored borders, non-contiguous
-- inputs), the channels-last layout of the result, bf16, and misuse.
--
-- Tolerance against PyTorch: 1e-5 absolute + 1e-5 relative (f32 GEMMs
-- summing at most 48 products per output, in a different order).
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

local TOL = 1e-5
local ref, meta = sere.io.load("tests/data/ops/patch_embed.safetensors")

local leaf = T.leaf
local function rnd(...) return leaf(sere.randn(...)) end

-- y[b][d][i][j] = bias[d] + sum_{c,ky,kx} w[d][c][ky][kx] x[b][c][i*p+ky][j*p+kx], in Lua doubles.
local function conv_lua(x, w, b, p)
  local xs, ws = x:shape(), w:shape()
  local xt, wt, bt = x:totable(), w:totable(), b and b:totable()
  local hp, wp = xs[3] // p, xs[4] // p
  local y = {}
  for bi = 1, xs[1] do
    y[bi] = {}
    for d = 1, ws[1] do
      y[bi][d] = {}
      for i = 1, hp do
        y[bi][d][i] = {}
        for j = 1, wp do
          local s = bt and bt[d] or 0
          for c = 1, xs[2] do
            for ky = 1, p do
              for kx = 1, p do
                s = s + wt[d][c][ky][kx] * xt[bi][c][(i - 1) * p + ky][(j - 1) * p + kx]
              end
            end
          end
          y[bi][d][i][j] = s
        end
      end
    end
  end
  return sere.tensor(y)
end

T.test("matches PyTorch conv2d(stride = p): values and gradients", function()
  for _, c in ipairs({"a", "b", "c"}) do
    local p = tonumber(meta[c .. ".p"])
    local x, w, b = leaf(ref[c .. ".x"]), leaf(ref[c .. ".w"]), ref[c .. ".b"] and leaf(ref[c .. ".b"])
    local y = sere.patch_embed(x, w, b, p)
    T.close(y, ref[c .. ".y"], TOL, TOL, c .. ": y")
    y:backward(ref[c .. ".gy"])
    T.close(x.grad, ref[c .. ".gx"], TOL, TOL, c .. ": dx")
    T.close(w.grad, ref[c .. ".gw"], TOL, TOL, c .. ": dweight")
    if b then T.close(b.grad, ref[c .. ".gb"], TOL, TOL, c .. ": dbias") end
  end
end)

T.test("matches a direct convolution loop, including non-contiguous inputs", function()
  local x, w, b = sere.randn(2, 3, 7, 10), sere.randn(4, 3, 3, 3), sere.randn(4)
  T.close(sere.patch_embed(x, w, b, 3), conv_lua(x, w, b, 3), 1e-5, 1e-5, "contiguous")
  local xt = sere.randn(2, 3, 10, 7):transpose(3, 4)  -- [2, 3, 7, 10], transposed strides
  local wt = sere.randn(3, 3, 3, 4):permute(4, 1, 2, 3) -- [4, 3, 3, 3], permuted strides
  T.eq(xt:is_contiguous(), false)
  T.close(sere.patch_embed(xt, wt, nil, 3), conv_lua(xt, wt, nil, 3), 1e-5, 1e-5, "non-contiguous, no bias")
end)

T.test("result is [B, D, Hp, Wp] with channels-last strides: flatten + transpose is contiguous", function()
  local y = sere.patch_embed(sere.randn(2, 3, 32, 48), sere.randn(8, 3, 16, 16), sere.randn(8), 16)
  local s = y:shape()
  T.eq(s[1], 2); T.eq(s[2], 8); T.eq(s[3], 2); T.eq(s[4], 3)
  local tokens = y:flatten(3):transpose(2, 3)
  T.eq(tokens:is_contiguous(), true)
  T.close(tokens, y:contiguous():flatten(3):transpose(2, 3):contiguous(), 0, 0, "tokens")
end)

T.test("gradcheck: x, weight and bias", function()
  -- odd sizes, H and W not multiples of p, a patch of 1
  for _, c in ipairs({{{1, 2, 7, 8}, 3, 3}, {{2, 1, 4, 5}, 2, 2}, {{2, 3, 3, 2}, 4, 1}}) do
    local xs, d, p = c[1], c[2], c[3]
    local x, w, b = rnd(xs), rnd(d, xs[2], p, p), rnd(d)
    gradcheck(function(x_, w_, b_) return sere.patch_embed(x_, w_, b_, p) end, {x, w, b})
  end
end)

T.test("gradcheck: non-contiguous x and weight, no bias", function()
  local x, w = rnd(2, 2, 9, 7), rnd(2, 3, 3, 5) -- x transposed to [2, 2, 7, 9]; w permuted to [5, 2, 3, 3]
  gradcheck(function(x_, w_) return sere.patch_embed(x_:transpose(3, 4), w_:permute(4, 1, 2, 3), nil, 3) end, {x, w})
end)

T.test("gradient only where needed: a constant image gets none", function()
  local x, w, b = sere.randn(2, 3, 8, 8), rnd(4, 3, 4, 4), rnd(4)
  local y = sere.patch_embed(x, w, b, 4)
  local g = sere.randn(y:shape())
  y:backward(g)
  T.eq(x.grad, nil)
  -- dbias = sum of g over batch and positions
  T.close(b.grad, g:sum({1, 3, 4}), 1e-5, 1e-5, "dbias")
  T.eq(w.grad:shape()[2], 3)
end)

T.test("empty batch", function()
  local x, w, b = rnd(0, 3, 8, 8), rnd(4, 3, 4, 4), rnd(4)
  local y = sere.patch_embed(x, w, b, 4)
  T.eq(y:shape()[1], 0); T.eq(y:shape()[2], 4)
  y:sum():backward()
  T.eq(w.grad, sere.zeros(4, 3, 4, 4)); T.eq(b.grad, sere.zeros(4)); T.eq(x.grad:shape()[1], 0)
end)

T.test("bf16 inputs are computed in f32 and returned as bf16", function()
  local x, w, b = sere.randn(1, 3, 8, 8), sere.randn(4, 3, 4, 4), sere.randn(4)
  local xb, wb, bb = x:to("bf16"), w:to("bf16"), b:to("bf16")
  local y = sere.patch_embed(xb, wb, bb, 4)
  T.eq(y:dtype(), "bf16")
  T.close(y, conv_lua(xb:float(), wb:float(), bb:float(), 4), 0.05, 1e-2, "bf16")
  xb.requires_grad = true
  local yb = sere.patch_embed(xb, wb, bb, 4)
  yb:backward(sere.ones(yb:shape()):to("bf16"))
  T.eq(xb.grad:dtype(), "bf16")
end)

T.test("misuse raises errors naming the op and the shapes", function()
  local x, w, b = sere.randn(2, 3, 8, 8), sere.randn(4, 3, 4, 4), sere.randn(4)
  T.raises(function() sere.patch_embed(sere.randn(3, 8, 8), w, b, 4) end,
    "patch_embed: x must be a float %[B, C, H, W%]")
  T.raises(function() sere.patch_embed(x:long(), w, b, 4) end, "got i64 of shape %[2, 3, 8, 8%]")
  T.raises(function() sere.patch_embed(x, sere.randn(4, 2, 4, 4), b, 4) end, "weight must be a float %[D, 3, 4, 4%]")
  T.raises(function() sere.patch_embed(x, w, b, 2) end, "got f32 of shape %[4, 3, 4, 4%]")
  T.raises(function() sere.patch_embed(x, w:long(), b, 4) end, "weight must be")
  T.raises(function() sere.patch_embed(x, w, sere.randn(5), 4) end, "bias must be a float %[4%] tensor")
  T.raises(function() sere.patch_embed(x, w, sere.randn(1, 4), 4) end, "bias must be")
  T.raises(function() sere.patch_embed(sere.randn(1, 3, 3, 8), w, b, 4) end, "smaller than the patch size 4")
  T.raises(function() sere.patch_embed(x, w, b, 0) end, "patch size must be positive")
  T.raises(function() sere.patch_embed(x, w, b, 2.5) end, "expected an integer")
  T.raises(function() sere.patch_embed(x, w, b) end, "expected an integer")
  T.raises(function() sere.patch_embed(x, w, 1, 4) end, "patch_embed: argument #3: expected a tensor")
  T.raises(function() sere.patch_embed(x, nil, b, 4) end, "patch_embed: argument #2: expected a tensor")
end)

T.finish()
