-- test_cuda_matmul.lua — CUDA parity of the matrix products (kernels/
-- matmul.cu on cuBLAS) and the patch embedding (kernels/patch_embed.cu +
-- cuBLAS) against the CPU ops, forward and every gradient:
--   * matmul as the ViT's linear layers call it (x @ W:t(), 2-D and 3-D x),
--     odd sizes (1, 7, 33), every 1-D promotion, batched and broadcast
--     batches (stride-0 operands, a shared left operand whose gradient sums
--     over the batch), transposed, narrowed, permuted and un-BLAS-able views,
--     bmm, empty inner dims, bf16 and bf16 x f32;
--   * patch_embed on [2, 3, 32, 32] with p = 16 and 8, H and W not multiples
--     of p, without bias, a strided image, bf16 and mixed dtypes;
--   * misuse: mixed devices, integer products on the GPU.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local shape_str = P.shape_str
local function matmul(a, b) return a:matmul(b) end

-- a @ b for random a of shape sa and b of shape sb.
local function mm(sa, sb, opts)
  opts = opts or {}
  P.check(T, {name = string.format("%s%s @ %s%s", opts.prefix or "matmul ", shape_str(sa), shape_str(sb),
                                   opts.dtype and (" " .. opts.dtype) or ""),
              inputs = {P.randn(sa), P.randn(sb)}, fn = opts.fn or matmul, grad = true, dtype = opts.dtype,
              tol = opts.tol, grad_tol = opts.grad_tol})
end

-- x @ W^T with W stored [out, in], as nn.Linear computes it.
local function linear(x, w) return x:matmul(w:t()) end

-- ---- the ViT's linear layers -------------------------------------------------

mm({394, 384}, {1152, 384}, {prefix = "linear qkv (x @ W:t()) ", fn = linear})
mm({2, 197, 96}, {288, 96}, {prefix = "linear 3-D x (x @ W:t()) ", fn = linear})
mm({2, 37, 64}, {64, 256}, {prefix = "linear with W [in, out] "})

-- ---- odd sizes -------------------------------------------------------------------

mm({1, 1}, {1, 1})
mm({7, 33}, {33, 1})
mm({33, 7}, {7, 33})
mm({1, 33}, {33, 7})
mm({197, 7}, {7, 33})

-- ---- 1-D promotions -------------------------------------------------------------

mm({33}, {33})
mm({7, 33}, {33})
mm({33}, {33, 7})
mm({33}, {3, 33, 7})
mm({3, 7, 33}, {33})

-- ---- batches ----------------------------------------------------------------------

mm({4, 7, 33}, {4, 33, 5})
mm({2, 3, 7, 8}, {8, 5})                 -- batch folded into the rows
mm({8, 7}, {2, 3, 7, 5})                 -- a shared: its gradient sums over the batch
mm({3, 1, 7, 8}, {1, 4, 8, 5})           -- both broadcast
mm({3, 1, 7, 8}, {4, 8, 5})
mm({1, 7, 8}, {5, 8, 6})
mm({3, 7, 33}, {3, 33, 5}, {prefix = "bmm ", fn = function(a, b) return sere.bmm(a, b) end})

-- ---- views -----------------------------------------------------------------------------

P.check(T, {name = "matmul a:t() @ b:t() (both transposed)", inputs = {P.randn({33, 7}), P.randn({5, 33})},
            fn = function(a, b) return a:t():matmul(b:t()) end, grad = true})
P.check(T, {name = "matmul narrowed rows and columns (row stride > columns)",
            inputs = {P.randn({12, 40}), P.randn({50, 9})},
            fn = function(a, b) return a:narrow(1, 2, 7):narrow(2, 4, 33):matmul(b:narrow(1, 11, 33):narrow(2, 2, 5)) end,
            grad = true})
P.check(T, {name = "matmul permuted batch dims [4, 3, 7, 8]:transpose(1, 2) @ [3, 4, 8, 5]",
            inputs = {P.randn({4, 3, 7, 8}), P.randn({3, 4, 8, 5})},
            fn = function(a, b) return a:transpose(1, 2):matmul(b) end, grad = true})
P.check(T, {name = "matmul transposed batched b [4, 5, 33]:transpose(2, 3)",
            inputs = {P.randn({4, 7, 33}), P.randn({4, 5, 33})},
            fn = function(a, b) return a:matmul(b:transpose(2, 3)) end, grad = true})
P.check(T, {name = "matmul expanded (stride 0) b [1, 8, 5]:expand(4, 8, 5)",
            inputs = {P.randn({4, 7, 8}), P.randn({1, 8, 5})},
            fn = function(a, b) return a:matmul(b:expand(4, 8, 5)) end, grad = true})
-- Neither stride is 1: cuBLAS cannot read it, so it is copied first.
P.check(T, {name = "matmul column stride 2 (copied for cuBLAS)",
            inputs = {P.randn({7, 8, 2}), P.randn({8, 5})},
            fn = function(a, b) return a:select(3, 2):matmul(b) end, grad = true})

-- ---- empty inner dim -------------------------------------------------------------

P.check(T, {name = "matmul [3, 0] @ [0, 4] (zeros)", inputs = {sere.zeros({3, 0}), sere.zeros({0, 4})},
            fn = matmul})

-- ---- bf16 --------------------------------------------------------------------------------

mm({394, 384}, {1152, 384}, {prefix = "linear qkv (x @ W:t()) ", fn = linear, dtype = "bf16"})
mm({4, 7, 33}, {4, 33, 5}, {dtype = "bf16"})
mm({8, 7}, {2, 3, 7, 5}, {dtype = "bf16"})
mm({33}, {33, 7}, {dtype = "bf16"})
P.check(T, {name = "matmul bf16 [7, 33] @ f32 [33, 5]", inputs = {P.randn({7, 33}):to("bf16"), P.randn({33, 5})},
            fn = matmul, grad = true})

-- ---- patch_embed ----------------------------------------------------------------------

local function pe(p) return function(x, w, b) return sere.patch_embed(x, w, b, p) end end

local function patch_case(xs, d, p, opts)
  opts = opts or {}
  local inputs = {P.randn(xs), P.randn({d, xs[2], p, p})}
  if not opts.no_bias then inputs[3] = P.randn({d}) end
  P.check(T, {name = string.format("patch_embed x %s p = %d D = %d%s%s", shape_str(xs), p, d,
                                   opts.no_bias and " no bias" or "", opts.dtype and (" " .. opts.dtype) or ""),
              inputs = inputs, fn = opts.no_bias and function(x, w) return sere.patch_embed(x, w, nil, p) end or pe(p),
              grad = true, dtype = opts.dtype})
end

patch_case({2, 3, 32, 32}, 48, 16)
patch_case({2, 3, 32, 32}, 33, 8)
patch_case({2, 3, 35, 33}, 7, 8)           -- a border no patch covers
patch_case({1, 1, 7, 9}, 5, 3, {no_bias = true})
patch_case({2, 3, 32, 32}, 48, 16, {dtype = "bf16"})
patch_case({2, 3, 35, 33}, 7, 8, {dtype = "bf16"})
P.check(T, {name = "patch_embed strided x (H and W swapped by a transpose)",
            inputs = {P.randn({2, 3, 24, 16}), P.randn({12, 3, 8, 8}), P.randn({12})},
            fn = function(x, w, b) return sere.patch_embed(x:transpose(3, 4), w, b, 8) end, grad = true})
P.check(T, {name = "patch_embed bf16 x, f32 weight and bias",
            inputs = {P.randn({2, 3, 16, 16}):to("bf16"), P.randn({10, 3, 8, 8}), P.randn({10})},
            fn = pe(8), grad = true, tol = P.BF16_TOL})

-- ---- misuse and empty outputs ---------------------------------------------------------

if P.available then
  T.test("matmul, bmm, patch_embed: tensors on different devices", function()
    local a, b = P.randn({3, 4}), P.randn({4, 5})
    T.raises(function() return a:cuda():matmul(b) end, "matmul: expected all tensors on one device")
    T.raises(function() return a:matmul(b:cuda()) end, "matmul: expected all tensors on one device")
    local x, y = P.randn({2, 3, 4}), P.randn({2, 4, 5})
    T.raises(function() return sere.bmm(x:cuda(), y) end, "bmm: expected all tensors on one device")
    local img, w, bias = P.randn({1, 3, 8, 8}), P.randn({4, 3, 4, 4}), P.randn({4})
    T.raises(function() return sere.patch_embed(img:cuda(), w:cuda(), bias, 4) end,
             "patch_embed: expected all tensors on one device")
  end)
  T.test("matmul: integer products on cuda", function()
    local a = sere.ones({2, 3}, {dtype = "i64"}):cuda()
    T.raises(function() return a:matmul(a:t()) end, "matmul: integer products are not implemented for cuda")
  end)
  T.test("matmul: empty outputs on cuda", function()
    local a = T.leaf(P.randn({0, 5}):cuda())
    local b = T.leaf(P.randn({5, 3}):cuda())
    local c = a:matmul(b)
    T.eq(table.concat(c:shape(), "x"), "0x3")
    T.eq(c:device(), "cuda")
    c:backward(sere.zeros({0, 3}):cuda())
    T.eq(b.grad:cpu(), sere.zeros({5, 3}))
  end)
else
  T.skip("cuda matmul misuse", P.reason)
end

T.finish()
