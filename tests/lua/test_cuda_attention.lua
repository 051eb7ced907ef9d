-- test_cuda_attention.lua — CUDA parity of sere.attention (kernels/
-- attention.cu: the fused forward and the deterministic dq and dk/dv
-- backward kernels) against the CPU op, forward and all three gradients:
--   * ViT-S heads (d = 64, T = 37 and 197), contiguous and as the model
--     makes them: q, k, v selected from one permuted [B, T, 3, h, d] tensor;
--   * odd sequence lengths (1, 5, 33), head widths 16, 32, 64, 128 and
--     ones that are no power of two (3, 24, 200), dv != d, Tq != Tk both
--     ways, more than one tile of keys and of queries, no leading dims;
--   * transposed and narrowed views (copied or read in place), large
--     logits (the online softmax must not overflow), bf16;
--   * empty key and query sets; misuse: mixed devices, too wide heads.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local function attention(scale)
  return function(q, k, v) return sere.attention(q, k, v, scale) end
end

local shape_str = P.shape_str

-- q [lead..., tq, d], k [lead..., tk, d], v [lead..., tk, dv]
local function case(name, lead, tq, tk, d, dv, opts)
  opts = opts or {}
  local function shape(t, w)
    local s = {table.unpack(lead)}
    s[#s + 1], s[#s + 2] = t, w
    return s
  end
  P.check(T, {name = string.format("attention %s q %s k %s v %s", name, shape_str(shape(tq, d)),
                                   shape_str(shape(tk, d)), shape_str(shape(tk, dv))),
              inputs = {P.randn(shape(tq, d)), P.randn(shape(tk, d)), P.randn(shape(tk, dv))},
              fn = opts.fn or attention(opts.scale), grad = true, dtype = opts.dtype,
              tol = opts.tol, grad_tol = opts.grad_tol})
end

-- ---- ViT shapes -------------------------------------------------------------

case("ViT-S local crop", {1, 2}, 37, 37, 64, 64, {scale = 0.125})
case("ViT-S global crop", {1, 2}, 197, 197, 64, 64, {scale = 0.125})
case("ViT tiny recipe (d = 16)", {2, 2}, 17, 17, 16, 16, {scale = 0.25})

-- As nn.Attention calls it: [B, T, 3, h, d] permuted to [3, B, h, T, d] and
-- selected, so q, k and v are strided views of one tensor (rows 3*h*d apart).
local function from_qkv(qkv)
  local x = qkv:permute(3, 1, 4, 2, 5)
  return sere.attention(x:select(1, 1), x:select(1, 2), x:select(1, 3), 0.125)
end
for _, t in ipairs({37, 197}) do
  P.check(T, {name = string.format("attention q, k, v selected from a permuted qkv [1, %d, 3, 2, 64]", t),
              inputs = {P.randn({1, t, 3, 2, 64})}, fn = from_qkv, grad = true})
end

-- ---- odd sizes and widths ---------------------------------------------------

case("one token", {1, 3}, 1, 1, 16, 16)
case("T = 5", {2, 2}, 5, 5, 32, 32)
case("T = 33", {1, 2}, 33, 33, 64, 64)
case("T = 33, d = 16", {3}, 33, 33, 16, 16)
case("d = 128", {1, 1}, 20, 20, 128, 128)
case("d = 3 (padded to 16 columns)", {2, 3}, 7, 7, 3, 3)
case("d = 24, dv = 40", {2}, 9, 11, 24, 40)
case("d = 200, dv = 8 (16 threads per row)", {1}, 6, 10, 200, 8)
case("Tq < Tk over two key tiles", {2}, 3, 150, 32, 32)
case("Tq > Tk over two query tiles", {1, 2}, 70, 9, 16, 16)
case("one query, many keys", {1}, 1, 66, 64, 64)
case("no leading dims", {}, 13, 6, 8, 5)

-- ---- views --------------------------------------------------------------------

-- Column stride != 1 (copied first): k given as [d, T] and transposed.
P.check(T, {name = "attention transposed k [1, 2, 64, 37] -> [1, 2, 37, 64]",
            inputs = {P.randn({1, 2, 37, 64}), P.randn({1, 2, 64, 37}), P.randn({1, 2, 37, 64})},
            fn = function(q, kt, v) return sere.attention(q, kt:transpose(3, 4), v, 0.125) end, grad = true})
-- Row strides and leading strides of narrowed views (read in place); the
-- heads of v swapped by a transpose of the leading dims.
P.check(T, {name = "attention narrowed q, k and a leading-dim transposed v",
            inputs = {P.randn({2, 3, 12, 40}), P.randn({2, 3, 15, 48}), P.randn({3, 2, 15, 32})},
            fn = function(q, k, v)
              return sere.attention(q:narrow(4, 5, 32), k:narrow(3, 2, 14):narrow(4, 9, 32),
                                    v:transpose(1, 2):narrow(3, 1, 14))
            end, grad = true})
-- A broadcast (stride 0) key/value head shared by every query head.
P.check(T, {name = "attention k, v expanded over the heads",
            inputs = {P.randn({1, 4, 9, 16}), P.randn({1, 1, 9, 16}), P.randn({1, 1, 9, 16})},
            fn = function(q, k, v) return sere.attention(q, k:expand(1, 4, 9, 16), v:expand(1, 4, 9, 16)) end,
            grad = true})

-- ---- large logits ----------------------------------------------------------------

-- Scores of several hundred: exp overflows f32 without the running max.
-- A score near 500 carries f32 rounding of 3e-5 (the two devices sum its
-- 64 products in different orders), and P = exp(S - m) turns that into a
-- relative error of P of the same size: hence the looser bounds.
P.check(T, {name = "attention large logits (|scores| up to ~500)",
            inputs = {P.randn({1, 2, 37, 64}) * 12, P.randn({1, 2, 37, 64}) * 12, P.randn({1, 2, 37, 64})},
            fn = attention(0.125), grad = true, tol = 1e-4, grad_tol = 2e-4})
P.check(T, {name = "attention large negative logits only (all scores ~ -1000)",
            inputs = {P.randn({1, 1, 5, 16}) * 0.01 + 1, P.randn({1, 1, 70, 16}) * 0.01 - 1,
                      P.randn({1, 1, 70, 16})},
            fn = attention(62.5), grad = true, grad_tol = 1e-3})

-- ---- bf16 ---------------------------------------------------------------------------

case("bf16 ViT-S local crop", {1, 2}, 37, 37, 64, 64, {dtype = "bf16", scale = 0.125})
case("bf16 Tq != Tk", {2}, 9, 20, 32, 16, {dtype = "bf16"})

-- ---- empty sizes --------------------------------------------------------------------

case("no keys (output 0)", {2}, 3, 0, 8, 4)

-- ---- misuse ---------------------------------------------------------------------------

if P.available then
  T.test("attention: q, k, v on different devices", function()
    local q, k, v = P.randn({1, 4, 8}), P.randn({1, 4, 8}), P.randn({1, 4, 8})
    local mixed = "attention: expected all tensors on one device"
    T.raises(function() return sere.attention(q:cuda(), k, v) end, mixed)
    T.raises(function() return sere.attention(q, k:cuda(), v:cuda()) end, mixed)
    T.raises(function() return sere.attention(q:cuda(), k:cuda(), v) end, mixed)
  end)
  T.test("attention: head widths past the CUDA kernels' limit", function()
    local q = P.randn({1, 2, 300}):cuda()
    T.raises(function() return sere.attention(q, q, q) end, "attention: CUDA kernels take head widths up to 256")
    local v = P.randn({1, 2, 257}):cuda()
    T.raises(function() return sere.attention(q:narrow(3, 1, 8), q:narrow(3, 1, 8), v) end, "up to 256")
  end)
  -- No queries: nothing to launch (so not a parity case); zero gradients.
  T.test("attention: no queries on CUDA", function()
    local q, k = T.leaf(P.randn({2, 0, 8}):cuda()), T.leaf(P.randn({2, 5, 8}):cuda())
    local v = T.leaf(P.randn({2, 5, 4}):cuda())
    local o = sere.attention(q, k, v)
    T.eq(table.concat(o:shape(), "x"), "2x0x4")
    T.eq(o:device(), "cuda")
    o:backward(sere.zeros({2, 0, 4}):cuda())
    T.eq(k.grad:device(), "cuda")
    T.eq(k.grad:cpu(), sere.zeros({2, 5, 8}))
    T.eq(v.grad:cpu(), sere.zeros({2, 5, 4}))
  end)
  T.test("attention: shape errors on CUDA tensors", function()
    local q, k = P.randn({2, 4, 8}):cuda(), P.randn({2, 5, 8}):cuda()
    T.raises(function() return sere.attention(q, k, k:narrow(2, 1, 4)) end,
             "attention: k .* and v .* same number of keys")
  end)
else
  T.skip("cuda attention misuse", P.reason)
end

T.finish()
