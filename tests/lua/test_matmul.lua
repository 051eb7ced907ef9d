-- test_matmul.lua — matmul/mm/bmm against a naive Lua implementation of
-- PyTorch's matmul rules (1-D promotion, batch broadcasting) for every
-- combination of ranks, on contiguous, transposed, narrowed, permuted and
-- expanded (stride 0) operands, in f32, bf16, mixed and integer dtypes;
-- finite-difference gradients of every combination; error messages.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

-- f32 products of k <= 13 terms of randn values, against a double reference:
-- the f32 rounding error is ~k * 6e-8 * sum|a*b|, far below these.
local F32_ATOL, F32_RTOL = 1e-4, 1e-4
-- bf16 keeps 8 significant bits: the f32 result is rounded once to within
-- 2^-9 relative; 2^-7 leaves margin for the f32 accumulation.
local BF16_ATOL, BF16_RTOL = 1e-3, 2 ^ -7

sere.manual_seed(2024)

local function rnd(shape) local x = sere.randn(shape); x.requires_grad = true; return x end

-- Naive matmul over flat Lua arrays with PyTorch's semantics; returns the
-- flat result and its shape. Integer inputs give exact integer results.
local function ref_matmul(a, b)
  local as, bs = a:shape(), b:shape()
  local av, bv = a:reshape(-1):totable(), b:reshape(-1):totable()
  local a1, b1 = #as == 1, #bs == 1
  if a1 then as = {1, as[1]} end
  if b1 then bs = {bs[1], 1} end
  local n, k, m = as[#as - 1], as[#as], bs[#bs]
  assert(k == bs[#bs - 1], "ref_matmul: inner dims differ")
  local ab, bb = {table.unpack(as, 1, #as - 2)}, {table.unpack(bs, 1, #bs - 2)}
  local nb = math.max(#ab, #bb)
  local batch = {}
  for i = 1, nb do
    local x, y = ab[i - (nb - #ab)] or 1, bb[i - (nb - #bb)] or 1
    assert(x == y or x == 1 or y == 1, "ref_matmul: batch dims do not broadcast")
    batch[i] = x == 1 and y or x
  end
  local total = 1
  for _, s in ipairs(batch) do total = total * s end
  -- offset of the batch entry `idx` (0-based, over `batch`) in an operand with batch dims `ob`
  local function batch_offset(ob, idx, matrix)
    local off = 0
    for i = 1, #ob do
      local j = idx[i + nb - #ob]
      off = off * ob[i] + (ob[i] == 1 and 0 or j)
    end
    return off * matrix
  end
  local out = {}
  for flat = 0, total - 1 do
    local idx, r = {}, flat
    for i = nb, 1, -1 do idx[i] = r % batch[i]; r = r // batch[i] end
    local ao, bo = batch_offset(ab, idx, n * k), batch_offset(bb, idx, k * m)
    for i = 0, n - 1 do
      for j = 0, m - 1 do
        local s = 0
        for q = 0, k - 1 do s = s + av[ao + i * k + q + 1] * bv[bo + q * m + j + 1] end
        out[#out + 1] = s
      end
    end
  end
  local shape = {table.unpack(batch)}
  if not a1 then shape[#shape + 1] = n end
  if not b1 then shape[#shape + 1] = m end
  return out, shape
end

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end

-- Checks out against the reference of a @ b; atol = rtol = 0 means exact.
local function check(out, a, b, atol, rtol, what)
  local want, shape = ref_matmul(a, b)
  what = what or (shape_str(a:shape()) .. " x " .. shape_str(b:shape()))
  T.eq(shape_str(out:shape()), shape_str(shape), what .. " shape")
  local got = out:reshape(-1):totable()
  T.eq(#got, #want, what .. " numel")
  for i = 1, #want do
    local g, w = got[i], want[i]
    if type(g) == "boolean" then g = g and 1 or 0 end
    if math.abs(g - w) > atol + rtol * math.abs(w) then
      error(string.format("%s: element %d is %.9g, expected %.9g", what, i, g, w), 2)
    end
  end
end

local combos = {
  {{5}, {5}}, {{5}, {5, 3}}, {{4, 5}, {5}}, {{7, 13}, {13, 5}}, {{3, 7, 13}, {13, 5}},
  {{7, 13}, {3, 13, 5}}, {{2, 1, 3, 4}, {5, 4, 6}}, {{5}, {2, 5, 3}}, {{2, 3, 5}, {5}},
  {{2, 3, 4}, {2, 4, 6}}, {{1, 3, 4}, {2, 4, 2}}, {{2, 1, 7, 13}, {1, 3, 13, 5}}, {{1, 13}, {13, 1}},
}

T.test("matmul matches naive loops for every rank combination", function()
  for _, c in ipairs(combos) do
    local a, b = sere.randn(c[1]), sere.randn(c[2])
    check(a:matmul(b), a, b, F32_ATOL, F32_RTOL)
    check(sere.matmul(a, b), a, b, F32_ATOL, F32_RTOL)
  end
  local d = sere.tensor({1, 2, 3}, {dtype = "f32"}):matmul(sere.tensor({4, 5, 6}, {dtype = "f32"}))
  T.eq(d:dim(), 0); T.eq(d:item(), 32.0)
end)

T.test("matmul of empty operands", function()
  local a, b = sere.randn(0, 3), sere.randn(3, 2)
  T.eq(shape_str(a:matmul(b):shape()), "[0, 2]")
  local z = sere.randn(2, 0):matmul(sere.randn(0, 3))
  T.eq(z, sere.zeros(2, 3))
  T.eq(shape_str(sere.randn(4, 0, 3):matmul(sere.randn(3, 2)):shape()), "[4, 0, 2]")
end)

T.test("matmul reads transposed, narrowed, permuted and expanded operands", function()
  local cases = {
    {"both transposed", sere.randn(13, 7):t(), sere.randn(5, 13):t()},
    {"weight transposed (nn.Linear)", sere.randn(3, 7, 13), sere.randn(5, 13):t()},
    {"batched transposes", sere.randn(3, 13, 7):transpose(2, 3), sere.randn(3, 5, 13):transpose(-1, -2)},
    {"narrowed columns (ld > cols)", sere.randn(7, 20):narrow(2, 3, 13), sere.randn(13, 9):narrow(2, 2, 5)},
    {"narrowed rows", sere.randn(10, 13):narrow(1, 2, 7), sere.randn(15, 5):narrow(1, 3, 13)},
    {"transposed with ld > rows", sere.randn(13, 10):narrow(2, 2, 7):t(), sere.randn(13, 5)},
    {"strides fit neither layout (copied)", sere.randn(7, 13, 2):select(3, 1), sere.randn(13, 5, 3):select(3, 2)},
    {"permuted batch", sere.randn(13, 3, 7):permute(2, 3, 1), sere.randn(3, 13, 5)},
    {"expanded batch of a (stride 0)", sere.randn(7, 13):expand(4, 7, 13), sere.randn(4, 13, 5)},
    {"expanded batch of b (stride 0)", sere.randn(4, 7, 13), sere.randn(13, 5):expand(4, 13, 5)},
    {"expanded inside the matrix", sere.randn(1, 13):expand(7, 13), sere.randn(13, 1):expand(13, 5)},
    {"row vector with a stride", sere.randn(13, 3):select(2, 2), sere.randn(13, 5)},
    {"column vector with a stride", sere.randn(7, 13), sere.randn(13, 3):select(2, 3)},
    {"1-D narrowed into batched", sere.randn(20):narrow(1, 4, 13), sere.randn(2, 13, 5):transpose(1, 2):transpose(1, 2)},
  }
  for _, c in ipairs(cases) do check(c[2]:matmul(c[3]), c[2], c[3], F32_ATOL, F32_RTOL, c[1]) end
end)

T.test("matmul dtypes: bf16, mixed, exact integers", function()
  local a, b = sere.randn(3, 7, 13):bfloat16(), sere.randn(13, 5):bfloat16()
  local c = a:matmul(b)
  T.eq(c:dtype(), "bf16")
  check(c, a, b, BF16_ATOL, BF16_RTOL, "bf16")
  local bt = sere.randn(5, 13):bfloat16():t()
  check(a:matmul(bt), a, bt, BF16_ATOL, BF16_RTOL, "bf16 transposed")
  local m = a:matmul(sere.randn(13, 5))
  T.eq(m:dtype(), "f32")
  -- values up to 1e6: sums of 13 products reach ~1e13, far beyond f32's 24-bit
  -- mantissa, so only an exact integer path equals Lua's integer arithmetic
  local ia, ib = sere.randint(-1000000, 1000000, {2, 7, 13}), sere.randint(-1000000, 1000000, {13, 5})
  local ic = ia:matmul(ib)
  T.eq(ic:dtype(), "i64")
  check(ic, ia, ib, 0, 0, "i64")
  local big = sere.tensor({{3037000499, 1}}):matmul(sere.tensor({{3037000499}, {7}}))
  T.eq(big:totable()[1][1], 3037000499 * 3037000499 + 7, "i64 near 2^63")
  local ja, jb = sere.randint(-100, 100, {7, 13}, {dtype = "i32"}), sere.randint(-100, 100, {13}, {dtype = "i32"})
  T.eq(ja:matmul(jb):dtype(), "i32")
  check(ja:matmul(jb), ja, jb, 0, 0, "i32")
  local sa, sb = sere.randint(-1000, 1000, {13, 7}):t(), sere.randint(-1000, 1000, {13, 6}):narrow(2, 2, 3)
  check(sa:matmul(sb), sa, sb, 0, 0, "i64 strided")
  local mixed = ia:matmul(sere.randn(13, 2))
  T.eq(mixed:dtype(), "f32")
  local bools = sere.tensor({{true, false}, {false, false}}):matmul(sere.tensor({{true}, {true}}))
  T.eq(bools:dtype(), "bool"); T.eq(bools:totable()[1][1], true); T.eq(bools:totable()[2][1], false)
end)

T.test("mm and bmm", function()
  local a, b = sere.randn(7, 13), sere.randn(13, 5)
  check(a:mm(b), a, b, F32_ATOL, F32_RTOL, "mm")
  check(sere.mm(a, b), a, b, F32_ATOL, F32_RTOL, "sere.mm")
  local x, y = sere.randn(3, 7, 13), sere.randn(3, 5, 13):transpose(2, 3)
  check(x:bmm(y), x, y, F32_ATOL, F32_RTOL, "bmm")
  T.eq(x:bmm(y).grad_fn, nil)
  local p = rnd({2, 3}):matmul(sere.randn(3, 4))
  T.eq(p.grad_fn, "matmul")
end)

T.test("matmul gradients for every rank combination", function()
  for _, c in ipairs(combos) do
    gradcheck(function(a, b) return a:matmul(b) end, {rnd(c[1]), rnd(c[2])})
  end
end)

T.test("matmul gradients through transposed, narrowed and expanded inputs", function()
  gradcheck(function(a, b) return a:t():matmul(b:t()) end, {rnd({5, 4}), rnd({3, 5})})
  gradcheck(function(x, w) return x:matmul(w:t()) end, {rnd({2, 3, 5}), rnd({4, 5})}) -- nn.Linear
  gradcheck(function(a, b) return a:transpose(2, 3):matmul(b) end, {rnd({3, 5, 4}), rnd({5, 2})})
  gradcheck(function(a, b) return a:narrow(2, 2, 5):matmul(b:narrow(1, 2, 5)) end, {rnd({4, 8}), rnd({7, 3})})
  gradcheck(function(a, b) return a:expand(3, 4, 5):matmul(b) end, {rnd({4, 5}), rnd({3, 5, 2})})
  gradcheck(function(a, b) return a:matmul(b:expand(2, 3, 5, 2)) end, {rnd({3, 4, 5}), rnd({1, 5, 2})})
  gradcheck(function(a, b) return a:permute(2, 3, 1):matmul(b) end, {rnd({5, 2, 3}), rnd({5, 2})})
  -- a gradient that arrives transposed (non-contiguous dC)
  gradcheck(function(a, b) return a:matmul(b):t() end, {rnd({4, 5}), rnd({5, 3})})
  gradcheck(function(a, b) return a:matmul(b):transpose(1, 3) end, {rnd({2, 4, 5}), rnd({5, 3})})
  -- only one side requires grad
  local w = sere.randn(5, 3)
  gradcheck(function(a) return a:matmul(w) end, {rnd({2, 4, 5})})
  local x = sere.randn(2, 4, 5)
  gradcheck(function(b) return x:matmul(b) end, {rnd({5, 3})})
end)

T.test("bmm gradients", function()
  gradcheck(function(a, b) return a:bmm(b) end, {rnd({3, 4, 5}), rnd({3, 5, 2})})
  gradcheck(function(a, b) return a:transpose(2, 3):bmm(b:transpose(2, 3)) end, {rnd({3, 5, 4}), rnd({3, 2, 5})})
end)

T.test("matmul gradient dtypes follow the inputs", function()
  local a = sere.randn(3, 4):bfloat16(); a.requires_grad = true
  local b = rnd({4, 2})
  local y = a:matmul(b)
  T.eq(y:dtype(), "f32")
  y:backward(sere.ones(3, 2))
  T.eq(a.grad:dtype(), "bf16"); T.eq(b.grad:dtype(), "f32")
  -- d/da of sum(a @ b) is each row of a's gradient equal to the row sums of b
  local bt, ga = b:totable(), a.grad:totable()
  for i = 1, 3 do
    for q = 1, 4 do T.close(ga[i][q], bt[q][1] + bt[q][2], 1e-2, 2 ^ -7, "bf16 grad") end
  end
end)

T.test("matmul errors name the op and shapes", function()
  T.raises(function() sere.randn(2, 3):matmul(sere.randn(4, 5)) end,
    "matmul: shapes %[2, 3%] and %[4, 5%] cannot be multiplied %(inner dims 3 and 4 differ%)")
  T.raises(function() sere.randn(3):matmul(sere.randn(4)) end, "shapes %[3%] and %[4%]")
  T.raises(function() sere.randn(2, 3, 4):matmul(sere.randn(3, 4, 5)) end,
    "batch dims of shapes %[2, 3, 4%] and %[3, 4, 5%] do not broadcast")
  T.raises(function() sere.tensor(1.0):matmul(sere.randn(3)) end, "at least 1 dim")
  T.raises(function() sere.randn(2, 3, 4):mm(sere.randn(4, 2)) end, "mm: expects two 2%-D tensors")
  T.raises(function() sere.randn(3, 4):bmm(sere.randn(3, 4, 2)) end, "bmm: expects")
  T.raises(function() sere.randn(2, 3, 4):bmm(sere.randn(3, 4, 2)) end, "bmm: expects.*%[2, 3, 4%] and %[3, 4, 2%]")
  T.raises(function() sere.randn(2, 3, 4):bmm(sere.randn(2, 5, 2)) end, "bmm: shapes %[2, 3, 4%] and %[2, 5, 2%]")
  T.raises(function() sere.randn(2, 3):matmul(5) end, "matmul: argument #2: expected a tensor")
end)

T.finish()
