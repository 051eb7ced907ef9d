-- test_cuda_index.lua — CUDA parity of joining and indexing
-- (kernels/index.cu) against the CPU, forward and backward:
--   * cat and stack along first, middle, last and negative dims, odd sizes,
--     transposed and narrowed inputs, dtype promotion (f32 + bf16), bf16,
--     i64, the empty 1-D tensor cat skips;
--   * index_select, gather and scatter_add with repeated indices (the
--     backward adds them up), i64 and i32 index tensors, strided index
--     tensors, indices smaller than the tensor, src larger than the index,
--     every dtype scatter_add takes (f32, bf16, i64, i32, u8, bool);
--   * masked_select with broadcasting both ways (the backward sums back)
--     and nonzero, across many scan chunks (>1024, so the prefix sum of the
--     chunk counts loops), NaN counting as non-zero, no true element;
--   * out-of-range indices (too large, below base 1, i32) raise the CPU's
--     message after the kernel, and the GPU stays usable; mixed devices
--     raise errors naming the op.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local gen = sere.Generator(4242)
local shape_str = P.shape_str
-- 1-based random indices in [1, size], any shape (repeats likely).
local function indices(size, shape, dtype)
  return sere.randint(1, size + 1, shape, {generator = gen, dtype = dtype or "i64"})
end
local function bools(shape, p)
  return sere.rand(shape, {generator = gen}):lt(p or 0.5)
end

-- ---- cat / stack -------------------------------------------------------------

local cat_cases = {
  {{{3, 4}, {5, 4}}, 1}, {{{2, 7, 3}, {2, 1, 3}, {2, 33, 3}}, 2}, {{{4, 5}, {4, 197}}, -1},
  {{{1}, {7}, {33}}, 1}, {{{3, 2, 5}, {3, 2, 5}}, 3},
}
for _, c in ipairs(cat_cases) do
  local shapes, dim = c[1], c[2]
  local inputs, names = {}, {}
  for i, s in ipairs(shapes) do inputs[i] = P.randn(s); names[i] = shape_str(s) end
  P.check(T, {name = string.format("cat %s dim %d", table.concat(names, " "), dim), inputs = inputs,
              fn = function(...) return sere.cat({...}, dim) end, grad = true})
end
P.check(T, {name = "cat of a transposed and a narrowed input", inputs = {P.randn({7, 3}), P.randn({3, 40})},
            fn = function(a, b) return sere.cat({a:t(), b:narrow(2, 5, 33)}, 2) end, grad = true})
P.check(T, {name = "cat f32 + bf16 promotes", inputs = {P.randn({3, 5}), P.randn({2, 5}):bfloat16()},
            fn = function(a, b) return sere.cat({a, b}) end, grad = true})
P.check(T, {name = "cat bf16 dim 2", inputs = {P.randn({5, 3}), P.randn({5, 9})}, dtype = "bf16",
            fn = function(a, b) return sere.cat({a, b}, 2) end, grad = true})
P.check(T, {name = "cat i64", inputs = {indices(9, {4, 3}), indices(9, {4, 1})},
            fn = function(a, b) return sere.cat({a, b}, -1) end})
P.check(T, {name = "cat skips an empty 1-D tensor", inputs = {sere.zeros({0}), P.randn({2, 3}), P.randn({2, 4})},
            fn = function(e, a, b) return sere.cat({e, a, e, b}, 2) end, grad = true})
for _, dim in ipairs({1, 2, 3, -1}) do
  P.check(T, {name = "stack 3 x [7, 5] dim " .. dim, inputs = {P.randn({7, 5}), P.randn({7, 5}), P.randn({7, 5})},
              fn = function(a, b, c) return sere.stack({a, b, c}, dim) end, grad = true})
end
P.check(T, {name = "stack of transposed inputs", inputs = {P.randn({5, 7}), P.randn({5, 7})},
            fn = function(a, b) return sere.stack({a:t(), b:t()}, 2) end, grad = true})

-- ---- index_select ------------------------------------------------------------

local select_cases = {
  {{7, 33}, 1, 12}, {{7, 33}, 2, 50}, {{3, 5, 197}, -1, 9}, {{3, 5, 197}, 2, 1}, {{1}, 1, 7}, {{200, 3}, 1, 333},
}
for _, c in ipairs(select_cases) do
  local shape, dim, n = c[1], c[2], c[3]
  local size = shape[dim > 0 and dim or #shape + 1 + dim]
  P.check(T, {name = string.format("index_select %s dim %d, %d indices", shape_str(shape), dim, n),
              inputs = {P.randn(shape), indices(size, {n})},
              fn = function(x, i) return x:index_select(dim, i) end, grad = true})
end
P.check(T, {name = "index_select of a transposed input, i32 index", inputs = {P.randn({33, 7}), indices(33, {20}, "i32")},
            fn = function(x, i) return x:t():index_select(2, i) end, grad = true})
P.check(T, {name = "index_select with a strided index", inputs = {P.randn({9, 4}), indices(9, {6, 3})},
            fn = function(x, i) return x:index_select(1, i:select(2, 2)) end, grad = true})
P.check(T, {name = "index_select bf16", inputs = {P.randn({11, 6}), indices(11, {15})}, dtype = "bf16",
            fn = function(x, i) return x:index_select(1, i) end, grad = true})
P.check(T, {name = "index_select i64 data", inputs = {indices(100, {5, 8}), indices(8, {13})},
            fn = function(x, i) return x:index_select(2, i) end})
P.check(T, {name = "index_select u8 data", inputs = {indices(200, {6, 3}):to("u8"), indices(6, {5})},
            fn = function(x, i) return x:index_select(1, i) end})

-- ---- gather ------------------------------------------------------------------

local gather_cases = {
  {{7, 33}, 2, {7, 50}}, {{7, 33}, 1, {3, 33}}, {{7, 33}, 2, {5, 20}}, {{3, 5, 197}, -1, {3, 5, 9}},
  {{3, 5, 197}, 2, {2, 11, 100}}, {{1}, 1, {7}},
}
for _, c in ipairs(gather_cases) do
  local shape, dim, ishape = c[1], c[2], c[3]
  local size = shape[dim > 0 and dim or #shape + 1 + dim]
  P.check(T, {name = string.format("gather %s dim %d, index %s", shape_str(shape), dim, shape_str(ishape)),
              inputs = {P.randn(shape), indices(size, ishape)},
              fn = function(x, i) return x:gather(dim, i) end, grad = true})
end
P.check(T, {name = "gather of a transposed input with a transposed i32 index",
            inputs = {P.randn({33, 7}), indices(33, {6, 7}, "i32")},
            fn = function(x, i) return x:t():gather(2, i:t()) end, grad = true})
P.check(T, {name = "gather bf16", inputs = {P.randn({6, 9}), indices(9, {6, 4})}, dtype = "bf16",
            fn = function(x, i) return x:gather(2, i) end, grad = true})
P.check(T, {name = "gather i64 data", inputs = {indices(1000, {4, 6}), indices(4, {3, 6})},
            fn = function(x, i) return x:gather(1, i) end})

-- ---- scatter_add -------------------------------------------------------------

local scatter_cases = {
  {{7, 33}, 2, {7, 50}, {7, 50}}, {{7, 33}, 1, {20, 33}, {20, 33}}, {{7, 33}, 2, {5, 9}, {6, 12}},
  {{3, 5, 19}, -1, {3, 5, 40}, {3, 5, 40}}, {{3, 5, 19}, 1, {9, 2, 7}, {9, 4, 7}},
}
for _, c in ipairs(scatter_cases) do
  local shape, dim, ishape, sshape = c[1], c[2], c[3], c[4]
  local size = shape[dim > 0 and dim or #shape + 1 + dim]
  P.check(T, {name = string.format("scatter_add %s dim %d, index %s, src %s", shape_str(shape), dim,
                                   shape_str(ishape), shape_str(sshape)),
              inputs = {P.randn(shape), indices(size, ishape), P.randn(sshape)},
              fn = function(x, i, s) return x:scatter_add(dim, i, s) end, grad = {true, false, true}})
end
P.check(T, {name = "scatter_add into a transposed tensor from a narrowed src, i32 index",
            inputs = {P.randn({33, 7}), indices(33, {7, 10}, "i32"), P.randn({7, 30})},
            fn = function(x, i, s) return x:t():scatter_add(2, i, s:narrow(2, 3, 10)) end, grad = {true, false, true}})
P.check(T, {name = "scatter_add bf16", inputs = {P.randn({6, 9}), indices(9, {6, 20}), P.randn({6, 20})},
            dtype = "bf16", fn = function(x, i, s) return x:scatter_add(2, i, s) end, grad = {true, false, true}})
for _, dt in ipairs({"i64", "i32", "u8"}) do
  P.check(T, {name = "scatter_add " .. dt .. " (exact, u8 wraps)",
              inputs = {indices(250, {5, 7}, dt), indices(7, {5, 30}), indices(250, {5, 30}, dt)},
              fn = function(x, i, s) return x:scatter_add(2, i, s) end})
end
P.check(T, {name = "scatter_add bool (or)", inputs = {bools({5, 7}, 0.2), indices(7, {5, 9}), bools({5, 9}, 0.3)},
            fn = function(x, i, s) return x:scatter_add(2, i, s) end})

-- ---- masked_select / nonzero -------------------------------------------------

local mask_cases = {
  {{7, 33}, {7, 33}}, {{7, 33}, {33}}, {{33}, {7, 33}}, {{5, 1, 9}, {4, 1}}, {{1}, {1}}, {{300, 41}, {300, 41}},
}
for _, c in ipairs(mask_cases) do
  P.check(T, {name = string.format("masked_select %s by mask %s", shape_str(c[1]), shape_str(c[2])),
              inputs = {P.randn(c[1]), bools(c[2])},
              fn = function(x, m) return x:masked_select(m) end, grad = true})
end
P.check(T, {name = "masked_select of a transposed input by a transposed mask",
            inputs = {P.randn({33, 7}), bools({33, 7})},
            fn = function(x, m) return x:t():masked_select(m:t()) end, grad = true})
P.check(T, {name = "masked_select bf16", inputs = {P.randn({9, 13}), bools({9, 13})}, dtype = "bf16",
            fn = function(x, m) return x:masked_select(m) end, grad = true})
P.check(T, {name = "masked_select i64, no true element", inputs = {indices(50, {6, 5}), bools({6, 5}, 0)},
            fn = function(x, m) return x:masked_select(m) end})
P.check(T, {name = "masked_select over 20 chunks", inputs = {P.randn({82000}), bools({82000}, 0.3)},
            fn = function(x, m) return x:masked_select(m) end, grad = true})

local function sparse(shape, p)
  local x = P.randn(shape)
  return x * bools(shape, p):float()
end
P.check(T, {name = "nonzero [7, 33]", inputs = {sparse({7, 33}, 0.3)}, fn = function(x) return x:nonzero() end})
P.check(T, {name = "nonzero [3, 5, 197] transposed", inputs = {sparse({3, 5, 197}, 0.1)},
            fn = function(x) return x:transpose(1, 3):nonzero() end})
P.check(T, {name = "nonzero of a 0-dim tensor", inputs = {sere.tensor(2.5)}, fn = function(x) return x:nonzero() end})
P.check(T, {name = "nonzero bool, i32, u8", inputs = {bools({9, 4}), indices(3, {5, 6}, "i32") - 2, indices(3, {4, 4}, "u8") - 1},
            fn = function(b, i, u) return b:nonzero(), i:nonzero(), u:nonzero() end})
P.check(T, {name = "nonzero counts NaN, not -0", inputs = {sere.tensor({0, -0.0, 0 / 0, 1, 0})},
            fn = function(x) return x:nonzero() end})
P.check(T, {name = "nonzero of all zeros", inputs = {sere.zeros({4, 5})}, fn = function(x) return x:nonzero() end})
-- 1100 chunks of 4096: the prefix sum over chunk counts takes two rounds of 1024.
P.check(T, {name = "nonzero over 1100 scan chunks", inputs = {bools({1100, 4096}, 0.01)},
            fn = function(x) return x:nonzero() end})

-- ---- errors ------------------------------------------------------------------

if not P.available then
  T.skip("cuda index errors", P.reason)
else
  T.test("cuda index: out-of-range indices raise the CPU's message", function()
    local x = sere.randn({4, 8}):cuda()
    local function idx(t, dt) return sere.tensor(t, {dtype = dt or "i64"}):cuda() end
    T.raises(function() return x:index_select(2, idx({1, 9, 3})) end,
             "index_select: index 9 is out of range for dim 2 of size 8 %(valid: 1 to 8%)")
    T.raises(function() return x:index_select(-1, idx({2, 0}, "i32")) end, "index_select: index 0 is out of range")
    -- the first bad index in row-major order is the one reported
    T.raises(function() return x:gather(1, idx({{1, 2}, {7, 5}, {-1, 1}})) end,
             "gather: index 7 is out of range for dim 1 of size 4")
    T.raises(function() return x:gather(2, idx({{1, 2}, {3, 9}}):t()) end, "gather: index 9 is out of range for dim 2")
    T.raises(function() return x:scatter_add(1, idx({{5, 1}}), sere.ones({1, 2}):cuda()) end,
             "scatter_add: index 5 is out of range for dim 1 of size 4")
    T.raises(function() return sere.zeros({3, 0}):cuda():index_select(2, idx({1})) end,
             "index 1 is out of range: dim 2 has size 0")
    T.raises(function() return x:index_select(1, sere.tensor({1.0}):cuda()) end, "index must be an i64 or i32 tensor")
    -- the device is still usable
    T.eq(x:index_select(2, idx({8, 1})):cpu():totable()[1][1], x:cpu():totable()[1][8])
  end)

  T.test("cuda index: mixed devices name the op", function()
    local g, c = sere.randn({3, 4}):cuda(), sere.randn({3, 4})
    local i = sere.tensor({1, 2})
    T.raises(function() return sere.cat({g, c}) end, "cat: expected all tensors on one device")
    T.raises(function() return sere.stack({c, g}) end, "stack: expected all tensors on one device")
    T.raises(function() return g:index_select(1, i) end, "index_select: expected all tensors on one device")
    T.raises(function() return g:gather(1, sere.ones({1, 4}, {dtype = "i64"})) end, "gather: expected all tensors")
    T.raises(function() return g:scatter_add(1, sere.ones({1, 4}, {dtype = "i64"}):cuda(), c) end,
             "scatter_add: expected all tensors")
    T.raises(function() return g:masked_select(c:gt(0)) end, "masked_select: expected all tensors")
  end)

  T.test("cuda index: results and gradients stay on the GPU", function()
    local x = sere.randn({5, 6}):cuda()
    x.requires_grad = true
    local y = sere.cat({x:index_select(2, sere.tensor({2, 2, 5}):cuda()), x:gather(2, sere.ones({5, 2}, {dtype = "i64"}):cuda())}, 2)
    T.eq(y:device(), "cuda")
    y:sum():backward()
    T.eq(x.grad:device(), "cuda")
    T.eq(x:masked_select(x:gt(0)):device(), "cuda")
    T.eq(x:nonzero():device(), "cuda")
  end)
end

T.finish()
