-- test_cuda_norm.lua — CUDA parity of layer norm (kernels/layernorm.cu)
-- and batch norm (kernels/batchnorm.cu) against the CPU, forward and
-- backward (every input's gradient):
--   * layer norm on the model's rows (D = 64, 384, 768: [B, 37, 64],
--     [B, 197, 384]), odd sizes (D = 1, 7, 33), more rows than the weight
--     gradient's 256 row blocks, without weight and/or bias, transposed
--     input, rows far from zero, bf16;
--   * batch norm [B, C] and [B, C, H, W] in training mode (with and without
--     running statistics, compared after the update) and eval mode, no
--     affine, channels-last input (kept channels last), the SERE heads'
--     [B, N, D] tokens viewed as a map, bf16, strided bf16 running stats;
--   * errors: mixed devices, one value per channel in training.
-- The SyncBatchNorm hook on CUDA is tested in tests/c/test_cuda_batchnorm_sync.c.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local shape_str = P.shape_str

local function device_test(name, fn) P.test(T, name, fn) end

-- ---- layer norm -----------------------------------------------------------
local function layer_norm(x, w, b) return sere.layer_norm(x, w, b) end

for _, shape in ipairs({{2, 37, 64}, {2, 197, 384}, {2, 9, 768}, {7, 33}, {5, 1}, {3, 7}, {1, 1}, {600, 12}}) do
  local d = shape[#shape]
  P.check(T, {name = "layer_norm " .. shape_str(shape), inputs = {P.randn(shape), P.randn({d}), P.randn({d})},
              fn = layer_norm, grad = true})
end
P.check(T, {name = "layer_norm without weight and bias [4, 33]", inputs = {P.randn({4, 33})},
            fn = function(x) return sere.layer_norm(x) end, grad = true})
P.check(T, {name = "layer_norm with weight only [6, 64]", inputs = {P.randn({6, 64}), P.randn({64})},
            fn = function(x, w) return sere.layer_norm(x, w) end, grad = true})
P.check(T, {name = "layer_norm with bias only, eps 1e-6 [6, 7]", inputs = {P.randn({6, 7}), P.randn({7})},
            fn = function(x, b) return sere.layer_norm(x, nil, b, 1e-6) end, grad = true})
P.check(T, {name = "layer_norm of a transposed [64, 5] (rows of 64 strided)",
            inputs = {P.randn({64, 5}), P.randn({64}), P.randn({64})},
            fn = function(x, w, b) return sere.layer_norm(x:t(), w, b) end, grad = true})
P.check(T, {name = "layer_norm rows far from zero (mean 100, std 0.1) [8, 384]",
            inputs = {P.randn({8, 384}) * 0.1 + 100, P.randn({384}), P.randn({384})}, fn = layer_norm, grad = true})
P.check(T, {name = "layer_norm bf16 [2, 17, 384]", dtype = "bf16",
            inputs = {P.randn({2, 17, 384}), P.randn({384}), P.randn({384})}, fn = layer_norm, grad = true})

device_test("layer_norm: mixed devices are an error naming the op", function()
  T.raises(function() sere.layer_norm(sere.randn(3, 4):cuda(), sere.randn(4)) end, "layer_norm")
end)

-- ---- batch norm -----------------------------------------------------------
-- Returns y and the running statistics after the in-place update, so both
-- are compared.
local function batch_norm(training, momentum)
  return function(x, w, b, rm, rv)
    local y = sere.batch_norm(x, w, b, rm, rv, training, momentum)
    if rm then return y, rm, rv end
    return y
  end
end

-- x, weight, bias, running_mean, running_var (positive) for the channels
-- in dim `cdim` of x (2 unless x is viewed differently in fn).
local function bn_inputs(shape, cdim)
  local c = shape[cdim or 2]
  return {P.randn(shape) * 2 + 0.5, P.randn({c}), P.randn({c}), P.randn({c}), P.randn({c}):abs() + 0.5}
end
local BN_GRAD = {true, true, true, false, false}

for _, shape in ipairs({{8, 5}, {600, 3}, {4, 6, 7, 5}, {2, 3, 1, 1}, {64, 4, 14, 14}, {3, 33, 13}}) do
  P.check(T, {name = "batch_norm training " .. shape_str(shape), inputs = bn_inputs(shape),
              fn = batch_norm(true, 0.1), grad = BN_GRAD})
  P.check(T, {name = "batch_norm eval " .. shape_str(shape), inputs = bn_inputs(shape),
              fn = batch_norm(false), grad = BN_GRAD})
end
P.check(T, {name = "batch_norm training without running stats [5, 4, 6]", inputs = {P.randn({5, 4, 6}) * 3 - 1},
            fn = function(x) return sere.batch_norm(x, nil, nil, nil, nil, true) end, grad = true})
P.check(T, {name = "batch_norm training, momentum 0.3, channels last [3, 4, 5, 6] (stored [3, 5, 6, 4])",
            inputs = bn_inputs({3, 5, 6, 4}, 4),
            fn = function(x, w, b, rm, rv)
              -- [B, H, W, C] memory viewed as [B, C, H, W]
              local y = sere.batch_norm(x:permute(1, 4, 2, 3), w, b, rm, rv, true, 0.3)
              assert(y:stride()[2] == 1, "the output keeps the channels-last layout")
              return y, rm, rv
            end, grad = BN_GRAD})
-- what the SERE heads do: [B, N, D] tokens viewed as a [B, D, Hp, Wp] map
P.check(T, {name = "batch_norm training on [2, 12, 6] tokens viewed as [2, 6, 3, 4]", inputs = bn_inputs({2, 12, 6}, 3),
            fn = function(x, w, b, rm, rv)
              return sere.batch_norm(x:transpose(2, 3):reshape(2, 6, 3, 4), w, b, rm, rv, true, 0.1), rm, rv
            end, grad = BN_GRAD})
P.check(T, {name = "batch_norm eval on a transposed [7, 6] (channels strided)", inputs = bn_inputs({7, 6}),
            fn = function(x, w, b, rm, rv) return sere.batch_norm(x:t():t():contiguous():t():t(), w, b, rm, rv) end,
            grad = BN_GRAD})
P.check(T, {name = "batch_norm bf16 training [6, 5, 9]", dtype = "bf16", inputs = bn_inputs({6, 5, 9}),
            fn = batch_norm(true, 0.1), grad = BN_GRAD})
P.check(T, {name = "batch_norm bf16 eval [6, 5, 9]", dtype = "bf16", inputs = bn_inputs({6, 5, 9}),
            fn = batch_norm(false), grad = BN_GRAD})
-- running statistics that are strided columns of a bf16 [C, 2] buffer
P.check(T, {name = "batch_norm training with strided bf16 running stats [9, 4]",
            inputs = {P.randn({9, 4}), P.randn({4, 2}):to("bf16"), P.randn({4, 2}):abs():to("bf16") + 0.5},
            fn = function(x, m, v)
              local rm, rv = m:select(2, 2), v:select(2, 1)
              return sere.batch_norm(x, nil, nil, rm, rv, true, 0.25), m, v
            end, grad = {true, false, false}})

device_test("batch_norm: errors on CUDA", function()
  local x = sere.randn(4, 3):cuda()
  T.raises(function() sere.batch_norm(x, sere.randn(3), nil, nil, nil, true) end, "batch_norm")
  T.raises(function() sere.batch_norm(sere.randn(1, 3):cuda(), nil, nil, nil, nil, true) end,
    "more than 1 value per channel")
  -- the running stats stay where they were
  local rm, rv = sere.zeros(3):cuda(), sere.ones(3):cuda()
  T.raises(function() sere.batch_norm(sere.randn(1, 3, 1):cuda(), nil, nil, rm, rv, true) end, "more than 1 value")
  T.eq(rm:cpu(), sere.zeros(3), "running_mean untouched")
end)

T.finish()
