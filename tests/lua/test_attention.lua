-- test_attention.lua — sere.attention (fused softmax(q k^T * scale) v): values
-- and q/k/v gradients against PyTorch (tests/data/ops/attention.safetensors,
-- from tests/reference/ops_attention.py) at odd sizes and ViT-S head shapes,
-- the softmax shift invariance (dK sums to 0 over the keys), against sere's
-- own matmul/softmax composition on strided views, several query blocks
-- and bf16; finite-difference gradients of q, k and v on
-- contiguous and transposed/narrowed inputs; empty sizes; error messages.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

-- The PyTorch reference is float64 evaluated from the f32 inputs; sere
-- computes in f32 (BLAS products over d = 64 or Tk = 197 terms, f32 exp):
-- 1e-5 of the largest magnitude (at least 1) plus 1e-4 relative covers that with room,
-- while any wrong term (a missed row, a wrong scale) is off by > 1e-2.
-- PyTorch's own f32 error on these cases is recorded in the file (<= 4e-6).
local REF_TOL, REF_RTOL = 1e-5, 1e-4
-- sere's composition runs the same f32 products in another order.
local COMP_TOL, COMP_RTOL = 2e-5, 1e-4
-- bf16: inputs and outputs carry 8 significant bits.
local BF16_TOL = 2 ^ -7

sere.manual_seed(31)

local function maxabs(t) return t:detach():float():abs():max():item() end
local function finite(t)
  local s = t:detach():float():sum():item()
  return s == s and math.abs(s) < math.huge
end

-- |got - want| <= tol * max(max|want|, 1) + rtol * |want| elementwise.
local function close(got, want, tol, rtol, what)
  sere.testing.assert_close(got, want, tol * math.max(maxabs(want), 1), rtol, what)
end

local leaf = T.leaf

-- The same values as tests/reference/ops_attention.py's hashed(): exact in
-- double, rounded once to f32.
local function hashed(n, seed)
  local v = {}
  for i = 0, n - 1 do v[i + 1] = ((i * 2654435761 + seed * 40503) % 4294967296) / 4294967296 * 4 - 2 end
  return sere.tensor(v)
end

-- Output and gradients of fn(q, k, v) for upstream gradient g.
local function run(fn, q, k, v, g)
  q, k, v = leaf(q), leaf(k), leaf(v)
  local out = fn(q, k, v)
  out:backward(g)
  return out:detach(), q.grad, k.grad, v.grad
end

local function composed(scale)
  return function(q, k, v) return (q:matmul(k:transpose(-1, -2)) * scale):softmax(-1):matmul(v) end
end

local function fused(scale)
  return function(q, k, v) return sere.attention(q, k, v, scale) end
end

local ref, meta = sere.io.load("tests/data/ops/attention.safetensors")

T.test("values and gradients match PyTorch (odd sizes, given and default scale)", function()
  for _, name in ipairs({"odd", "t5d3"}) do
    local q, k, v, g = ref[name .. ".q"], ref[name .. ".k"], ref[name .. ".v"], ref[name .. ".g"]
    local scale = tonumber(meta[name .. ".scale"])
    local out, dq, dk, dv = run(name == "odd" and fused(scale) or sere.attention, q, k, v, g)
    close(out, ref[name .. ".out"], REF_TOL, REF_RTOL, name .. " out")
    close(dq, ref[name .. ".dq"], REF_TOL, REF_RTOL, name .. " dq")
    close(dk, ref[name .. ".dk"], REF_TOL, REF_RTOL, name .. " dk")
    close(dv, ref[name .. ".dv"], REF_TOL, REF_RTOL, name .. " dv")
  end
end)

T.test("ViT-S heads (T = 197 and 37, d = 64) match PyTorch, q/k/v sliced from one qkv tensor", function()
  for _, c in ipairs({{"t197", 197, 1}, {"t37", 37, 11}}) do
    local name, t, seed = table.unpack(c)
    local shape, n = {1, 2, t, 64}, 2 * t * 64
    -- q, k, v as the ViT makes them: strided views of a [B, T, 3, h, d] leaf
    local raw = leaf(sere.stack({hashed(n, seed):view(shape), hashed(n, seed + 1):view(shape),
                                 hashed(n, seed + 2):view(shape)}, 1):permute(2, 4, 1, 3, 5))
    local qkv = raw:permute(3, 1, 4, 2, 5)
    local q, k, v = qkv:select(1, 1), qkv:select(1, 2), qkv:select(1, 3)
    T.eq(q:is_contiguous(), false)
    local g = hashed(n, seed + 3):view(shape)
    local rows = sere.arange(1, t + 1, tonumber(meta[name .. ".rows_stride"]))
    local function pick(x) return x:index_select(3, rows) end
    local out = sere.attention(q, k, v)
    out:backward(g)
    local grad = raw.grad:permute(3, 1, 4, 2, 5)
    close(pick(out), ref[name .. ".out"], REF_TOL, REF_RTOL, name .. " out")
    close(pick(grad:select(1, 1)), ref[name .. ".dq"], REF_TOL, REF_RTOL, name .. " dq")
    close(pick(grad:select(1, 2)), ref[name .. ".dk"], REF_TOL, REF_RTOL, name .. " dk")
    close(pick(grad:select(1, 3)), ref[name .. ".dv"], REF_TOL, REF_RTOL, name .. " dv")
    -- softmax is unchanged by adding one vector to every key, so dK sums to
    -- 0 over the keys; rounding of the recomputed probabilities must not
    -- break that (it does by ~1.5e-4 here if dS is not kept summing to 0)
    local dk = grad:select(1, 2)
    T.close(dk:sum(3):abs():max():item(), 0, 5e-5 * maxabs(dk), 0, name .. " sum of dk over keys")
    -- the strided views give the same result as contiguous copies
    close(out:detach(), sere.attention(q:detach():contiguous(), k:detach():contiguous(), v:detach():contiguous()),
          1e-6, 0, name .. " views")
  end
end)

T.test("matches the composition: several query blocks, Tq != Tk, dv != d, 3 leading dims", function()
  -- Tq = Tk = 300: 65536 / 300 = 218 query rows per block, so two blocks
  -- whose dK and dV contributions accumulate
  local cases = {{{1, 2, 300, 8}, {1, 2, 300, 8}, {1, 2, 300, 8}}, {{2, 1, 3, 7, 5}, {2, 1, 3, 9, 5}, {2, 1, 3, 9, 6}},
                 {{4, 1, 16}, {4, 1, 16}, {4, 1, 16}}, {{3, 40, 64}, {3, 1, 64}, {3, 1, 64}}}
  for _, c in ipairs(cases) do
    local q, k, v = sere.randn(c[1]), sere.randn(c[2]), sere.randn(c[3])
    local scale = 0.3
    local g = sere.randn(sere.attention(q, k, v):shape())
    local a = {run(fused(scale), q, k, v, g)}
    local b = {run(composed(scale), q, k, v, g)}
    for i, what in ipairs({"out", "dq", "dk", "dv"}) do
      close(a[i], b[i], COMP_TOL, COMP_RTOL, table.concat(c[1], "x") .. " " .. what)
    end
  end
end)

T.test("default scale is 1 / sqrt(d); the alias scaled_dot_product_attention", function()
  local q, k, v = sere.randn(2, 5, 16), sere.randn(2, 6, 16), sere.randn(2, 6, 3)
  close(sere.attention(q, k, v), sere.attention(q, k, v, 0.25), 0, 0, "default scale")
  close(sere.scaled_dot_product_attention(q, k, v, 0.5), sere.attention(q, k, v, 0.5), 0, 0, "alias")
  T.eq(sere.attention(q, k, v).grad_fn, nil)
  local ql = leaf(q)
  T.eq(sere.attention(ql, k, v).grad_fn, "attention")
  T.eq(sere.no_grad(function() return sere.attention(ql, k, v) end).grad_fn, nil)
end)

T.test("large scores stay finite (stable softmax)", function()
  local q, k, v = sere.randn(2, 4, 8) * 30, sere.randn(2, 6, 8) * 30, sere.randn(2, 6, 3)
  local out, dq, dk, dv = run(fused(1), q, k, v, sere.randn(2, 4, 3))
  local b = {run(composed(1), q, k, v, sere.randn(2, 4, 3))}
  T.eq(finite(out), true)
  close(out, b[1], COMP_TOL, COMP_RTOL, "large scores")
  for _, x in ipairs({dq, dk, dv}) do T.eq(finite(x), true) end
end)

T.test("bf16 inputs are computed in f32 and give bf16 results and gradients", function()
  local q, k, v = sere.randn(2, 5, 8):to("bf16"), sere.randn(2, 7, 8):to("bf16"), sere.randn(2, 7, 4):to("bf16")
  local g = sere.randn(2, 5, 4):to("bf16")
  local a = {run(fused(0.4), q, k, v, g)}
  local b = {run(fused(0.4), q:float(), k:float(), v:float(), g:float())}
  for i, what in ipairs({"out", "dq", "dk", "dv"}) do
    T.eq(a[i]:dtype(), "bf16", what .. " dtype")
    close(a[i]:float(), b[i], BF16_TOL, BF16_TOL, "bf16 " .. what)
  end
end)

T.test("finite-difference gradients of q, k and v", function()
  local opts = {eps = 1e-2, atol = 2e-3, rtol = 2e-2}
  for _, c in ipairs({{{2, 3, 4}, {2, 5, 4}, {2, 5, 3}}, {{1, 2, 5, 3}, {1, 2, 5, 3}, {1, 2, 5, 3}},
                      {{3, 1}, {4, 1}, {4, 2}}}) do
    local q, k, v = leaf(sere.randn(c[1])), leaf(sere.randn(c[2])), leaf(sere.randn(c[3]))
    gradcheck(fused(0.8), {q, k, v}, opts)
  end
end)

T.test("finite-difference gradients through transposed and narrowed inputs", function()
  local opts = {eps = 1e-2, atol = 2e-3, rtol = 2e-2}
  -- q and v transposed (column stride != 1: copied), k narrowed (row stride > d: read in place)
  local qt, kw, vt = leaf(sere.randn(2, 3, 4)), leaf(sere.randn(2, 5, 7)), leaf(sere.randn(2, 2, 5))
  gradcheck(function(a, b, c) return sere.attention(a:transpose(2, 3), b:narrow(3, 2, 3), c:transpose(2, 3)) end,
            {qt, kw, vt}, opts)
  -- one key/value tensor broadcast over heads with expand (stride 0)
  local q, kv = leaf(sere.randn(3, 4, 2)), leaf(sere.randn(1, 5, 2))
  gradcheck(function(a, b) return sere.attention(a, b:expand(3, 5, 2), b:expand(3, 5, 2)) end, {q, kv}, opts)
end)

T.test("empty sizes", function()
  local out = sere.attention(sere.randn(2, 3, 4), sere.randn(2, 0, 4), sere.randn(2, 0, 5))
  T.eq(out, sere.zeros(2, 3, 5))
  T.eq(table.concat(sere.attention(sere.randn(2, 0, 4), sere.randn(2, 3, 4), sere.randn(2, 3, 5)):shape(), ","),
       "2,0,5")
  T.eq(table.concat(sere.attention(sere.randn(0, 3, 4), sere.randn(0, 3, 4), sere.randn(0, 3, 5)):shape(), ","),
       "0,3,5")
  local q, k, v = leaf(sere.randn(2, 0, 4)), leaf(sere.randn(2, 3, 4)), leaf(sere.randn(2, 3, 5))
  sere.attention(q, k, v):sum():backward()
  T.eq(k.grad, sere.zeros(2, 3, 4))
  T.eq(v.grad, sere.zeros(2, 3, 5))
  q, k, v = leaf(sere.randn(2, 3, 4)), leaf(sere.randn(2, 0, 4)), leaf(sere.randn(2, 0, 5))
  sere.attention(q, k, v):sum():backward()
  T.eq(q.grad, sere.zeros(2, 3, 4))
end)

T.test("errors name the op, the shapes and the dtypes", function()
  local q, k, v = sere.randn(2, 5, 4), sere.randn(2, 6, 4), sere.randn(2, 6, 3)
  T.raises(function() sere.attention(q, sere.randn(2, 6, 5), v) end, "attention: q %[2, 5, 4%] and k %[2, 6, 5%]")
  T.raises(function() sere.attention(q, k, sere.randn(2, 7, 3)) end, "same number of keys")
  T.raises(function() sere.attention(q, sere.randn(3, 6, 4), sere.randn(3, 6, 3)) end, "leading dims")
  T.raises(function() sere.attention(q, sere.randn(1, 2, 6, 4), v) end, "same number of dims")
  T.raises(function() sere.attention(sere.randn(4), sere.randn(4), sere.randn(4)) end, "at least 2")
  T.raises(function() sere.attention(q:long(), k:long(), v:long()) end, "float tensors of one dtype, got i64")
  T.raises(function() sere.attention(q, k:to("bf16"), v) end, "got f32 %[2, 5, 4%], bf16 %[2, 6, 4%]")
  T.raises(function() sere.attention(q, k, v, "x") end, "scale")
  T.raises(function() sere.attention(q, k, v, math.huge) end, "scale must be finite")
  T.raises(function() sere.attention(q, k) end, "argument #3: expected a tensor")
end)

T.finish()
