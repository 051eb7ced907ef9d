-- test_batchnorm.lua — sere.batch_norm: training and eval mode against
-- PyTorch (tests/reference/ops_batchnorm.py, float64 references): outputs,
-- gradients of x, weight and bias, and the running statistics after one
-- call; channels-last inputs (kept channels last); the parallel path
-- against sere's own reductions; finite-difference gradient checks; errors.
-- The SyncBatchNorm hook is tested in C (tests/c/test_batchnorm_sync.c).
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

local ref, meta = sere.io.load("tests/data/ops/batchnorm.safetensors")
-- f32 against float64 references of magnitude O(1); the weight and bias
-- gradients sum over up to 40 values per channel.
local ATOL, RTOL = 1e-5, 1e-5

local leaf = T.leaf

-- Runs case c with x transformed by `view`; returns y, the leaves and the
-- running statistics (copies, updated in place by the call).
local function run_case(c, view)
  local x = leaf(ref[c .. ".x"])
  local w, b = ref[c .. ".w"] and leaf(ref[c .. ".w"]), ref[c .. ".b"] and leaf(ref[c .. ".b"])
  local rm, rv = ref[c .. ".rm"] and ref[c .. ".rm"]:clone(), ref[c .. ".rv"] and ref[c .. ".rv"]:clone()
  local y = sere.batch_norm(view and view(x) or x, w, b, rm, rv, meta[c .. ".training"] == "1",
    tonumber(meta[c .. ".momentum"]), tonumber(meta[c .. ".eps"]))
  y:backward(ref[c .. ".g"])
  return y, x, w, b, rm, rv
end

local function check_case(c, y, x, w, b, rm, rv)
  T.close(y, ref[c .. ".y"], ATOL, RTOL, c .. ": y")
  T.close(x.grad, ref[c .. ".gx"], ATOL, RTOL, c .. ": grad x")
  if w then
    T.close(w.grad, ref[c .. ".gw"], ATOL, RTOL, c .. ": grad weight")
    T.close(b.grad, ref[c .. ".gb"], ATOL, RTOL, c .. ": grad bias")
  end
  if ref[c .. ".rm_after"] then
    T.close(rm, ref[c .. ".rm_after"], ATOL, RTOL, c .. ": running_mean")
    T.close(rv, ref[c .. ".rv_after"], ATOL, RTOL, c .. ": running_var")
  elseif rm then
    T.eq(rm, ref[c .. ".rm"], c .. ": eval leaves running_mean alone")
    T.eq(rv, ref[c .. ".rv"], c .. ": eval leaves running_var alone")
  end
end

T.test("matches PyTorch: training (4-D, 2-D, no affine) and eval", function()
  for _, c in ipairs({"train4d", "train2d", "train3d_plain", "eval4d"}) do check_case(c, run_case(c)) end
end)

-- The same values with channels-last strides: [B, H, W, C] memory viewed as [B, C, H, W].
local function channels_last(x) return x:permute(1, 3, 4, 2):contiguous():permute(1, 4, 2, 3) end

T.test("channels-last input: same values, output and gradient stay channels last", function()
  for _, c in ipairs({"train4d", "eval4d"}) do
    local y, x, w, b, rm, rv = run_case(c, channels_last)
    T.eq(y:stride()[2], 1, "output keeps the layout")
    check_case(c, y, x, w, b, rm, rv)
  end
  -- what the SERE heads do: [B, N, D] tokens viewed as a [B, D, Hp, Wp] map
  local tokens = sere.randn(3, 6, 4)
  local map = tokens:transpose(2, 3):reshape(3, 4, 2, 3)
  T.eq(map:stride()[2], 1)
  local w, b = sere.rand(4) + 0.5, sere.randn(4)
  T.close(sere.batch_norm(map, w, b, nil, nil, true), sere.batch_norm(map:contiguous(), w, b, nil, nil, true),
    1e-6, 1e-5, "token map")
  local seq = tokens:transpose(2, 3) -- [B, D, N], 3-D channels last
  T.eq(sere.batch_norm(seq, w, b, nil, nil, true):stride()[2], 1)
  T.close(sere.batch_norm(seq, w, b, nil, nil, true), sere.batch_norm(seq:contiguous(), w, b, nil, nil, true),
    1e-6, 1e-5, "token sequence")
end)

T.test("other strides and bf16 go through a contiguous copy", function()
  local y, x, w, b, rm, rv = run_case("train4d", function(a) return a:transpose(3, 4):contiguous():transpose(3, 4) end)
  check_case("train4d", y, x, w, b, rm, rv)
  local xb = ref["eval4d.x"]:to("bf16")
  local yb = sere.batch_norm(xb, ref["eval4d.w"], ref["eval4d.b"], ref["eval4d.rm"], ref["eval4d.rv"], false)
  T.eq(yb:dtype(), "bf16")
  T.eq(yb, sere.batch_norm(xb:float(), ref["eval4d.w"], ref["eval4d.b"], ref["eval4d.rm"], ref["eval4d.rv"], false):to("bf16"))
end)

T.test("running statistics: momentum, unbiased variance, in place with a version bump", function()
  local x = sere.randn(8, 2, 3) * 2 + 1
  local rm, rv = sere.zeros(2), sere.ones(2)
  local keep = rm -- the same tensor object is updated in place
  sere.batch_norm(x, nil, nil, rm, rv, true, 0.25, 1e-5)
  sere.batch_norm(x, nil, nil, rm, rv, true, 0.25, 1e-5)
  T.eq(keep, rm)
  local xs = x:totable()
  for c = 1, 2 do
    local s, n = 0, 0
    for b = 1, 8 do for i = 1, 3 do s = s + xs[b][c][i]; n = n + 1 end end
    local mean, ss = s / n, 0
    for b = 1, 8 do for i = 1, 3 do ss = ss + (xs[b][c][i] - mean) ^ 2 end end
    local unbiased = ss / (n - 1)
    -- two updates from (0, 1) with momentum 0.25
    T.close(rm[c], 0.75 * (0.25 * mean) + 0.25 * mean, 1e-6, 1e-5, "running_mean")
    T.close(rv[c], 0.75 * (0.75 + 0.25 * unbiased) + 0.25 * unbiased, 1e-6, 1e-5, "running_var")
  end
  -- eval mode reads them
  local y = sere.batch_norm(x, nil, nil, rm, rv, false, 0.1, 1e-5)
  T.close(y, (x - rm:view(1, 2, 1)) / (rv:view(1, 2, 1) + 1e-5):sqrt(), 1e-6, 1e-5, "eval")
  -- a tensor saved by a later op sees the in-place update
  local r = sere.randn(2); r.requires_grad = true
  local s = sere.zeros(2)
  local p = (r * s):sum()
  sere.batch_norm(x, nil, nil, s, sere.ones(2), true)
  T.raises(function() p:backward() end, "modified in place")
end)

T.test("large inputs take the parallel path and match sere's reductions", function()
  for _, view in ipairs({false, true}) do
    local x = sere.randn(64, 16, 8, 5) * 1.5 + 3 -- 40960 elements
    if view then x = channels_last(x) end
    local w, b = sere.rand(16) + 0.5, sere.randn(16)
    local y = sere.batch_norm(x, w, b, nil, nil, true, 0.1, 1e-5)
    local mean, var = x:mean({1, 3, 4}, true), x:var({1, 3, 4}, true, 0)
    local expect = (x - mean) / (var + 1e-5):sqrt() * w:view(1, 16, 1, 1) + b:view(1, 16, 1, 1)
    T.close(y, expect, 1e-5, 1e-5, view and "channels last" or "contiguous")
  end
end)

T.test("gradcheck: training and eval, affine or not, odd sizes, channels-last and transposed input", function()
  local function rnd(...) return leaf(sere.randn(...)) end
  local function pos(n) return sere.rand(n) + 0.5 end
  gradcheck(function(x, w, b) return sere.batch_norm(x, w, b, sere.zeros(3), sere.ones(3), true) end,
    {rnd(4, 3, 5), rnd(3), rnd(3)})
  local rm, rv = sere.randn(3), pos(3)
  gradcheck(function(x, w, b) return sere.batch_norm(x, w, b, rm, rv, false) end, {rnd(2, 3, 2, 3), rnd(3), rnd(3)})
  gradcheck(function(x) return sere.batch_norm(x, nil, nil, nil, nil, true) end, {rnd(5, 4)})
  gradcheck(function(x, w) return sere.batch_norm(channels_last(x), w, nil, nil, nil, true) end,
    {rnd(3, 2, 3, 2), rnd(2)})
  gradcheck(function(x, b) return sere.batch_norm(x:transpose(1, 2), nil, b, nil, nil, true) end,
    {rnd(3, 7), rnd(3)})
  gradcheck(function(x, w, b) return sere.batch_norm(x, w, b, nil, nil, true, 0.1, 1e-3) end,
    {rnd(2, 1, 7), rnd(1), rnd(1)})
end)

T.test("errors name the op and the shapes", function()
  local x = sere.randn(4, 3, 2)
  T.raises(function() sere.batch_norm(sere.tensor({{1, 2}}), nil, nil, nil, nil, true) end,
    "batch_norm: expects a float tensor, got i64 of shape %[1, 2%]")
  T.raises(function() sere.batch_norm(sere.randn(5), nil, nil, nil, nil, true) end,
    "batch_norm: expects an input %[B, C, ...%] with at least 2 dims, got shape %[5%]")
  T.raises(function() sere.batch_norm(x, sere.ones(4), nil, nil, nil, true) end,
    "batch_norm: weight of shape %[4%] does not match the 3 channels %(dim 2%) of input %[4, 3, 2%]")
  T.raises(function() sere.batch_norm(x, nil, sere.ones(3, 1), nil, nil, true) end, "batch_norm: bias of shape %[3, 1%]")
  T.raises(function() sere.batch_norm(x, nil, nil, sere.zeros(3), nil, true) end,
    "batch_norm: give both running_mean and running_var, or neither")
  T.raises(function() sere.batch_norm(x, nil, nil, nil, nil, false) end, "batch_norm: eval mode %(training = false%) needs")
  T.raises(function() sere.batch_norm(x, nil, nil, sere.zeros(2), sere.ones(2), false) end,
    "batch_norm: running_mean of shape %[2%] does not match the 3 channels")
  T.raises(function() sere.batch_norm(x, nil, nil, sere.zeros(3):long(), sere.ones(3), true) end,
    "batch_norm: running_mean must be a float tensor, got i64")
  T.raises(function() sere.batch_norm(sere.randn(1, 3), nil, nil, nil, nil, true) end,
    "batch_norm: expected more than 1 value per channel when training, got input of shape %[1, 3%]")
  T.raises(function() sere.batch_norm(x, nil, nil, nil, nil, 1) end, "batch_norm: argument #6 %(training%): expected a boolean")
  T.raises(function() sere.batch_norm(x, nil, nil, nil, nil, true, 0.1, -1) end, "batch_norm: eps must be >= 0")
  T.raises(function() sere.batch_norm(x, 3) end, "batch_norm: argument #2 %(weight%): expected a tensor or nil, got number")
  local rm = sere.zeros(3); rm.requires_grad = true
  T.raises(function() sere.batch_norm(x, nil, nil, rm, sere.ones(3), true) end, "in%-place write to a tensor that requires grad")
  -- one value per channel is fine in eval mode
  T.eq(sere.batch_norm(sere.randn(1, 3), nil, nil, sere.zeros(3), sere.ones(3)):shape()[1], 1)
end)

T.finish()
