-- test_cuda_softmax.lua — CUDA parity of softmax and log_softmax
-- (kernels/softmax.cu) against the CPU, forward and backward:
--   * the last dim at the lengths the model uses (37 and 197: attention
--     rows, a warp each; 65536: the iBOT head, a block per row) and odd
--     ones (1, 7, 33, 1025);
--   * a middle and the first dim (one thread per column);
--   * transposed inputs, large logits (the max is subtracted), -inf
--     entries (probability 0), a row of NaN staying NaN, bf16.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local shape_str = P.shape_str

local function both(dim)
  return function(x) return x:softmax(dim), x:log_softmax(dim) end
end

local cases = {
  {{12, 37}, -1}, {{2, 3, 197}, -1}, {{3, 65536}, -1}, {{5, 1}, -1}, {{7}, 1}, {{4, 33}, 2},
  {{3, 1025}, -1}, {{2, 7, 5}, 2}, {{9, 4, 3}, 1}, {{2, 197, 6}, 2},
}
for _, c in ipairs(cases) do
  -- The first float output (softmax) carries the gradient; log_softmax's own below.
  P.check(T, {name = string.format("softmax/log_softmax %s dim %d", shape_str(c[1]), c[2]),
              inputs = {P.randn(c[1])}, fn = both(c[2]), grad = true})
  P.check(T, {name = string.format("log_softmax backward %s dim %d", shape_str(c[1]), c[2]),
              inputs = {P.randn(c[1])}, fn = function(x) return x:log_softmax(c[2]) end, grad = true})
end

P.check(T, {name = "softmax of a transposed [37, 12] along dim 2", inputs = {P.randn({37, 12})},
            fn = function(x) return x:t():softmax(2) end, grad = true})
P.check(T, {name = "softmax with large logits (x 80) [8, 197]", inputs = {P.randn({8, 197}) * 80},
            fn = both(-1), grad = true})
P.check(T, {name = "softmax rising rows (every element a new max) [4, 2000]",
            inputs = {sere.arange(0, 8000):reshape(4, 2000):float() * 0.01},
            fn = both(-1), grad = true})
P.check(T, {name = "softmax with -inf entries (rows and columns)",
            inputs = {sere.tensor({{-math.huge, 1, 2, -math.huge}, {3, -math.huge, 0, 1}, {0, 0, 0, -math.huge}})},
            fn = function(x) return x:softmax(2), x:softmax(1), x:log_softmax(2) end})
P.check(T, {name = "softmax of a row holding NaN is NaN",
            inputs = {sere.tensor({{1, 0 / 0, 2}, {1, 2, 3}})}, fn = both(2)})
P.check(T, {name = "softmax bf16 [6, 197]", dtype = "bf16", inputs = {P.randn({6, 197})}, fn = both(-1), grad = true})
P.check(T, {name = "softmax bf16 [2, 65536]", dtype = "bf16", inputs = {P.randn({2, 65536})}, fn = both(-1),
            grad = true})
P.check(T, {name = "softmax bf16 [5, 9, 4] dim 1", dtype = "bf16", inputs = {P.randn({5, 9, 4})}, fn = both(1),
            grad = true})

T.finish()
