-- test_cuda_reduce.lua — CUDA parity of the reductions (kernels/reduce.cu)
-- and of L2 normalisation (kernels/normalize.cu) against their CPU
-- versions, forward and backward:
--   * sum, mean, var, std (both corrections) and norm (p = 1, 2, 3, inf)
--     over the last dim, a middle dim, the first dim, dim sets that
--     interleave with kept dims, and all dims, with and without keepdim, on
--     odd sizes (1, 7, 33, 197) and on shapes large enough to split rows
--     and columns across blocks; transposed and narrowed inputs; bf16;
--   * integer sums (i64, i32, bool) exactly;
--   * sum_to through the backward of broadcasting additions;
--   * max, min (values and 1-based indices), argmax, argmin over a dim and
--     over all dims, with ties (the first index wins, as on the CPU), NaN,
--     -0, integer dtypes;
--   * normalize along the last, a middle and the first dim, lines longer
--     than a warp's, lines below eps;
--   * topk with k = 1 and k = 0 on the GPU; misuse: k > 1 on a cuda tensor
--     is refused naming the op.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local shape_str = P.shape_str
local function dims_str(d)
  if d == nil then return "all" end
  if type(d) == "table" then return "{" .. table.concat(d, ", ") .. "}" end
  return tostring(d)
end

-- ---- sum, mean, var, std, norm -------------------------------------------

local cases = {
  {{7, 33}, nil}, {{7, 33}, 2}, {{7, 33}, 1}, {{7, 33}, -1, true},
  {{3, 5, 197}, 2}, {{3, 5, 197}, {1, 3}}, {{3, 5, 197}, {1, 3}, true}, {{3, 5, 197}, {2, 3}},
  {{2, 1, 7}, 2}, {{2, 1, 7}, {1, 3}, true}, {{1}, nil}, {{1}, 1, true}, {{9}, 1},
  {{4, 3, 2, 5}, {2, 4}}, {{4, 3, 2, 5}, {1, 3}},
  {{200, 200}, nil},    -- one output: the row is split across blocks
  {{2000, 7}, 1},       -- few columns, many rows: columns split across blocks
  {{6, 5000}, 2},       -- long rows: a block per row
  {{33, 1100}, {1}, true},
}

local reductions = {
  {"sum", function(x, d, k) return x:sum(d, k) end},
  {"mean", function(x, d, k) return x:mean(d, k) end},
  {"var", function(x, d, k) return x:var(d, k) end},
  {"std", function(x, d, k) return x:std(d, k) end},
  {"norm", function(x, d, k) return x:norm(2, d, k) end},
}

for _, r in ipairs(reductions) do
  for _, c in ipairs(cases) do
    local shape, dims, keep = c[1], c[2], c[3]
    local name = string.format("%s %s dims %s%s", r[1], shape_str(shape), dims_str(dims), keep and " keepdim" or "")
    P.check(T, {name = name,
                inputs = {P.randn(shape)}, fn = function(x) return r[2](x, dims, keep) end, grad = true})
  end
end

for _, p in ipairs({1, 3, math.huge}) do
  for _, c in ipairs({{{7, 33}, 2}, {{3, 5, 197}, {1, 3}}, {{200, 200}, nil}, {{2000, 7}, 1}}) do
    P.check(T, {name = string.format("norm p=%g %s dims %s", p, shape_str(c[1]), dims_str(c[2])),
                inputs = {P.randn(c[1])}, fn = function(x) return x:norm(p, c[2]) end, grad = true})
  end
end
-- inf-norm ties share the gradient: |x| reaches the maximum twice per row.
P.check(T, {name = "norm p=inf with ties", inputs = {sere.tensor({{1, -3, 3, 2}, {-5, 5, 0.5, -5}})},
            fn = function(x) return x:norm(math.huge, 2) end, grad = true})
P.check(T, {name = "var and std with correction 0", inputs = {P.randn({5, 37})},
            fn = function(x) return x:var(2, false, 0), x:std(1, true, 0) end, grad = true})
P.check(T, {name = "var of a single element per output (n - 1 = 0)", inputs = {P.randn({4, 1})},
            fn = function(x) return x:var(2) end})
P.check(T, {name = "mean over an empty dim is NaN", inputs = {sere.zeros({3, 0})},
            fn = function(x) return x:mean(2), x:sum(2) end})

-- Views: the kernels read a contiguous copy; the gradient lands in the view's layout.
P.check(T, {name = "sum/var of a transposed [33, 7] over dim 2", inputs = {P.randn({33, 7})},
            fn = function(x) local t = x:t(); return t:sum(2), t:var(2) end, grad = true})
P.check(T, {name = "mean/norm of a narrowed [9, 40] over dim 1", inputs = {P.randn({9, 40})},
            fn = function(x) local n = x:narrow(2, 3, 33); return n:mean(1), n:norm(2, 1) end, grad = true})

for _, r in ipairs(reductions) do
  P.check(T, {name = r[1] .. " bf16 [3, 5, 197] dims {1, 3}", dtype = "bf16", inputs = {P.randn({3, 5, 197})},
              fn = function(x) return r[2](x, {1, 3}) end, grad = true})
  P.check(T, {name = r[1] .. " bf16 [2000, 7] dim 1", dtype = "bf16", inputs = {P.randn({2000, 7})},
              fn = function(x) return r[2](x, 1) end, grad = true})
end

-- ---- integer sums ----------------------------------------------------------

P.check(T, {name = "sum i64 (exact, wraps like PyTorch)",
            inputs = {sere.tensor({{2 ^ 53, 1, -7}, {2 ^ 62, 2 ^ 62, 3}}, {dtype = "i64"})},
            fn = function(x) return x:sum(2), x:sum(), x:sum(1, true) end})
P.check(T, {name = "sum i32 [33, 197] over dim 1 and all", inputs = {(P.randn({33, 197}) * 1000):to("i32")},
            fn = function(x) return x:sum(1), x:sum() end})
P.check(T, {name = "sum bool counts trues", inputs = {P.randn({7, 1100}):gt(0)},
            fn = function(x) return x:sum(2), x:sum() end})

-- ---- sum_to: the backward of broadcasting ----------------------------------

P.check(T, {name = "sum_to via broadcast add [64, 197, 24] + [24] and [197, 1]",
            inputs = {P.randn({64, 197, 24}), P.randn({24}), P.randn({197, 1})},
            fn = function(x, b, c) return x + b + c end, grad = true})
P.check(T, {name = "sum_to via broadcast mul [7, 1, 33] * [5, 1] bf16", dtype = "bf16",
            inputs = {P.randn({7, 1, 33}), P.randn({5, 1})}, fn = function(x, b) return x * b end, grad = true})

-- ---- max, min, argmax, argmin ----------------------------------------------

-- Values in {-2, ..., 2}: many ties in every line.
local function tied(shape) return (P.randn(shape) * 1.5):round() end

local select_cases = {
  {{7, 33}, 2}, {{7, 33}, 1}, {{3, 5, 197}, 2}, {{3, 5, 197}, 3}, {{3, 5, 197}, 1},
  {{1}, 1}, {{2, 1, 7}, 2}, {{6, 5000}, 2}, {{2000, 3}, 1},
}
for _, c in ipairs(select_cases) do
  for _, gen in ipairs({{"random", P.randn}, {"ties", tied}}) do
    P.check(T, {name = string.format("max/min %s %s dim %d", gen[1], shape_str(c[1]), c[2]),
                inputs = {gen[2](c[1])}, grad = true,
                fn = function(x)
                  local v, i = x:max(c[2])
                  local w, j = x:min(c[2], true)
                  return v, i, w, j
                end})
    P.check(T, {name = string.format("argmax/argmin %s %s dim %d", gen[1], shape_str(c[1]), c[2]),
                inputs = {gen[2](c[1])},
                fn = function(x) return x:argmax(c[2]), x:argmin(c[2], true) end})
  end
end
P.check(T, {name = "max/min/argmax/argmin over all dims with ties [3, 5, 197]", inputs = {tied({3, 5, 197})},
            grad = true, fn = function(x) return x:max(), x:argmax(), x:argmin(nil, true), x:min() end})
P.check(T, {name = "max over all dims of a transposed [40, 33]", inputs = {P.randn({40, 33})}, grad = true,
            fn = function(x) local t = x:t(); return t:max(), t:argmax() end})
P.check(T, {name = "max/argmin bf16 [7, 197] dim 2", dtype = "bf16", inputs = {tied({7, 197})}, grad = true,
            fn = function(x) local v, i = x:max(2); return v, i, x:argmin(2) end})
P.check(T, {name = "max/min with NaN and -0 (NaN is the extreme, -0 == 0)",
            inputs = {sere.tensor({{1, 0 / 0, 3}, {-0.0, 0, -1}, {-0.0, 0.0, 0.0}})},
            fn = function(x)
              local v, i = x:max(2)
              local w, j = x:min(2)
              return v, i, w, j
            end})
P.check(T, {name = "max/min i64 exact (beyond 2^53) and u8",
            inputs = {sere.tensor({{2 ^ 60 + 1, 2 ^ 60 + 3, -5}, {7, 7, 7}}, {dtype = "i64"})},
            fn = function(x)
              local v, i = x:max(2)
              local w, j = x:min(1)
              return v, i, w, j, x:abs():to("u8"):max(2)
            end})

-- ---- normalize -------------------------------------------------------------

for _, c in ipairs({{{7, 33}, -1}, {{3, 197, 5}, 2}, {{197, 6}, 1}, {{4, 1}, 2}, {{3, 1500}, 2}, {{2, 20000}, 2}}) do
  P.check(T, {name = string.format("normalize %s dim %d", shape_str(c[1]), c[2]), inputs = {P.randn(c[1])},
              fn = function(x) return sere.normalize(x, c[2], 1e-12) end, grad = true})
end
P.check(T, {name = "normalize with lines below eps (last dim and middle dim)",
            inputs = {sere.tensor({{{1e-4, -2e-4, 0}, {3, 4, 0}}, {{0, 0, 0}, {1e-5, 0, 0}}})},
            fn = function(x) return sere.normalize(x, 3, 1e-3), sere.normalize(x, 2, 1e-3) end, grad = true})
P.check(T, {name = "normalize transposed [33, 7] bf16", dtype = "bf16", inputs = {P.randn({33, 7})},
            fn = function(x) return sere.normalize(x:t(), -1, 1e-12) end, grad = true})

-- ---- misuse ------------------------------------------------------------------

if P.available then
  T.test("topk with k > 1 on a cuda tensor is refused by name", function()
    local x = P.randn({4, 9}):cuda()
    T.raises(function() return x:topk(3) end, "topk with k > 1: not implemented for cuda")
    local v, i = x:topk(1)
    T.eq(v:device(), "cuda")
    T.eq(i:cpu(), select(2, x:cpu():topk(1)))
    local v0, i0 = x:topk(0)
    T.eq(table.concat(v0:shape(), "x") .. " " .. i0:device(), "4x0 cuda")
  end)
else
  T.skip("topk with k > 1 on a cuda tensor is refused by name", P.reason)
end

T.finish()
