-- test_cuda_activation.lua — CUDA parity of GELU and ReLU
-- (kernels/activation.cu) against the CPU, forward and backward: odd
-- sizes, a ViT MLP-sized activation, transposed and narrowed views (made
-- contiguous first), large magnitudes (both tails of GELU), values near
-- GELU's minimum (where its derivative crosses zero), bf16, a bf16 input
-- with an f32 upstream gradient, and NaN / infinity.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local acts = {
  {"gelu", function(x) return sere.gelu(x) end},
  {"relu", function(x) return x:relu() end},
}

for _, a in ipairs(acts) do
  local name, f = a[1], a[2]
  for _, shape in ipairs({{1}, {7}, {7, 33}, {197}, {2, 197, 48}}) do
    P.check(T, {name = string.format("%s [%s]", name, table.concat(shape, ", ")), inputs = {P.randn(shape)},
                fn = f, grad = true})
  end
  P.check(T, {name = name .. " of a transposed view", inputs = {P.randn({9, 17})},
              fn = function(x) return f(x:t()) end, grad = true})
  P.check(T, {name = name .. " of a narrowed view", inputs = {P.randn({5, 40})},
              fn = function(x) return f(x:narrow(2, 4, 33)) end, grad = true})
  P.check(T, {name = name .. " of large magnitudes", inputs = {P.randn({7, 33}) * 8},
              fn = f, grad = true})
  P.check(T, {name = name .. " bf16", inputs = {P.randn({5, 33})}, fn = f, grad = true, dtype = "bf16"})
  P.check(T, {name = name .. " bf16 into an f32 consumer", inputs = {P.randn({5, 33}):to("bf16"), P.randn({5, 33})},
              fn = function(x, w) return f(x):float() * w end, grad = true, grad_tol = 1e-2})
  P.check(T, {name = name .. " of NaN and infinities", inputs = {sere.tensor({0 / 0, math.huge, -math.huge, 1})},
              fn = f, grad = true})
end

P.check(T, {name = "gelu around its minimum and in the far tails",
            inputs = {sere.tensor({-0.80, -0.7517915, -0.75, -0.70, -5, -9.5, -13, -14, 5, 9.5, 14})},
            fn = function(x) return sere.gelu(x) end, grad = true})

T.finish()
