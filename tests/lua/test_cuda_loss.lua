-- test_cuda_loss.lua — CUDA parity of the fused soft cross-entropy (the
-- iBOT / DINO loss, kernels/soft_cross_entropy.cu) against the CPU: the
-- per-row loss and the student's gradient (the teacher and the centre are
-- constants):
--   * the [CLS] loss on [2 B, K] and the patch loss on [B, N, K] with a
--     centre, K = 65536 and 8192 (a block per row, many columns per thread);
--   * short rows (K = 1, 7, 33, 197: fewer columns than threads), no
--     centre, a centre broadcast from [1], a transposed student;
--   * large logits (x 50), rows rising to the end (every column a new max:
--     the running sums rescale each time), teacher -inf columns (p = 0);
--   * bf16; errors: mixed devices, a teacher that requires grad.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local shape_str = P.shape_str

local function device_test(name, fn) P.test(T, name, fn) end

-- student, teacher (grad off) and centre; the model's temperatures.
local function loss(ts, tt)
  return function(s, t, c) return sere.soft_cross_entropy(s, t, c, ts or 0.1, tt or 0.04) end
end
local STUDENT_ONLY = {true, false, false}

local function centre_shape(shape)
  local c = {}
  for i = 1, #shape - 1 do c[i] = 1 end
  c[#shape] = shape[#shape]
  return c
end

for _, shape in ipairs({{4, 65536}, {4, 8192}, {2, 5, 8192}, {3, 7, 197}, {7, 33}, {6, 7}, {5, 1}, {3, 1000}}) do
  P.check(T, {name = "soft_cross_entropy " .. shape_str(shape) .. " with a centre",
              inputs = {P.randn(shape), P.randn(shape), P.randn(centre_shape(shape)) * 0.1},
              fn = loss(), grad = STUDENT_ONLY})
end
P.check(T, {name = "soft_cross_entropy without a centre, temperatures 1 and 1 [6, 300]",
            inputs = {P.randn({6, 300}), P.randn({6, 300})},
            fn = function(s, t) return sere.soft_cross_entropy(s, t) end, grad = {true, false}})
P.check(T, {name = "soft_cross_entropy with a centre broadcast from [1] [4, 50]",
            inputs = {P.randn({4, 50}), P.randn({4, 50}), P.randn({1})}, fn = loss(0.2, 0.07), grad = STUDENT_ONLY})
P.check(T, {name = "soft_cross_entropy of a transposed student [40, 6]",
            inputs = {P.randn({40, 6}), P.randn({6, 40}), P.randn({40})},
            fn = function(s, t, c) return sere.soft_cross_entropy(s:t(), t, c, 0.1, 0.04) end, grad = STUDENT_ONLY})
P.check(T, {name = "soft_cross_entropy with large logits (x 50) [3, 4096]",
            inputs = {P.randn({3, 4096}) * 50, P.randn({3, 4096}) * 50, P.randn({4096})}, fn = loss(),
            grad = STUDENT_ONLY})
P.check(T, {name = "soft_cross_entropy on rising rows (every column a new max) [2, 3000]",
            inputs = {sere.arange(0, 6000):reshape(2, 3000):float() * 0.003,
                      sere.arange(0, 6000):reshape(2, 3000):float() * 0.001, sere.zeros(3000)},
            fn = loss(), grad = STUDENT_ONLY})
P.check(T, {name = "soft_cross_entropy with teacher -inf columns (p = 0) [3, 40]",
            inputs = {P.randn({3, 40}), P.randn({3, 40}):masked_fill(P.randn({3, 40}):gt(0.5), -math.huge),
                      P.randn({40})},
            fn = loss(), grad = STUDENT_ONLY})
P.check(T, {name = "soft_cross_entropy bf16 [2, 3, 8192]", dtype = "bf16",
            inputs = {P.randn({2, 3, 8192}), P.randn({2, 3, 8192}), P.randn({1, 1, 8192}) * 0.1}, fn = loss(),
            grad = STUDENT_ONLY})
P.check(T, {name = "soft_cross_entropy bf16 [4, 33]", dtype = "bf16",
            inputs = {P.randn({4, 33}), P.randn({4, 33}), P.randn({33})}, fn = loss(), grad = STUDENT_ONLY})

device_test("soft_cross_entropy: errors on CUDA", function()
  local s, t = sere.randn(3, 8):cuda(), sere.randn(3, 8):cuda()
  T.raises(function() sere.soft_cross_entropy(s, sere.randn(3, 8), nil, 0.1, 0.04) end, "soft_cross_entropy")
  T.raises(function() sere.soft_cross_entropy(s, t, sere.randn(8), 0.1, 0.04) end, "soft_cross_entropy")
  local tg = t:clone()
  tg.requires_grad = true
  T.raises(function() sere.soft_cross_entropy(s, tg, nil, 0.1, 0.04) end, "detach it")
end)

T.finish()
