-- test_reduce.lua — reductions (sum, mean, var, std, norm, max/min,
-- argmax/argmin), softmax/log_softmax and topk: values against Lua loops
-- over totable() for many shapes, dims and layouts, integer and bf16
-- inputs, long-sum accuracy, finite-difference gradients, and the errors
-- misuse must raise.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

-- Tolerances. F32: outputs are f32 roundings of double references (a few
-- ulp after long sums). BF16: one bf16 rounding of the output (8 bits).
local F32_ATOL, F32_RTOL = 1e-5, 1e-5
local BF16_ATOL, BF16_RTOL = 1e-2, 1e-2

-- ---- reference helpers ---------------------------------------------------
local function values_of(t)
  local v = t:contiguous():reshape(-1):totable()
  for i = 1, #v do
    if type(v[i]) == "boolean" then v[i] = v[i] and 1 or 0 end
  end
  return v
end

-- Nested table of `shape` from a flat list (a number for shape {}).
local function nest(flat, shape)
  if #shape == 0 then return flat[1] end
  local function build(d, off)
    local out, stride = {}, 1
    for k = d + 1, #shape do stride = stride * shape[k] end
    for i = 1, shape[d] do
      out[i] = d == #shape and flat[off + i] or build(d + 1, off + (i - 1) * stride)
    end
    return out
  end
  return build(1, 0)
end

-- Applies f to the list of values that reduce into each output; dims as
-- the API takes them (nil, an integer or a table, 1-based, negative ok).
local function ref_reduce(t, dims, keepdim, f)
  local shape, v = t:shape(), values_of(t)
  local nd, red = #shape, {}
  if dims == nil then
    for d = 1, nd do red[d] = true end
  else
    if type(dims) ~= "table" then dims = {dims} end
    for _, d in ipairs(dims) do red[d < 0 and d + nd + 1 or d] = true end
  end
  local oshape, kept, nout = {}, {}, 1
  for d = 1, nd do
    if not red[d] then
      oshape[#oshape + 1] = shape[d]; kept[#kept + 1] = d; nout = nout * shape[d]
    elseif keepdim then
      oshape[#oshape + 1] = 1
    end
  end
  local groups, idx = {}, {}
  for o = 1, nout do groups[o] = {} end
  for d = 1, nd do idx[d] = 0 end
  for i = 1, #v do
    local o = 0
    for _, d in ipairs(kept) do o = o * shape[d] + idx[d] end
    table.insert(groups[o + 1], v[i])
    for d = nd, 1, -1 do
      idx[d] = idx[d] + 1
      if idx[d] < shape[d] then break end
      idx[d] = 0
    end
  end
  local out = {}
  for o = 1, nout do out[o] = f(groups[o]) end
  return nest(out, oshape), oshape
end

local function lsum(xs) local s = 0; for _, x in ipairs(xs) do s = s + x end; return s end
local function lmean(xs) return lsum(xs) / #xs end
local function lvar(corr)
  return function(xs)
    local m, s = lmean(xs), 0
    for _, x in ipairs(xs) do s = s + (x - m) ^ 2 end
    return s / math.max(0, #xs - corr)
  end
end
local function lstd(corr) local v = lvar(corr); return function(xs) return math.sqrt(v(xs)) end end
local function lnorm(p)
  return function(xs)
    if p == math.huge then
      local m = 0
      for _, x in ipairs(xs) do m = math.max(m, math.abs(x)) end
      return m
    end
    local s = 0
    for _, x in ipairs(xs) do s = s + math.abs(x) ^ p end
    return s ^ (1 / p)
  end
end

-- Calls fn(positions) for every line along dim d (1-based, positive) of a
-- tensor of `shape`; positions index the flat row-major values.
local function lines(shape, d, fn)
  local outer, n, inner = 1, shape[d], 1
  for k = 1, d - 1 do outer = outer * shape[k] end
  for k = d + 1, #shape do inner = inner * shape[k] end
  for o = 0, outer - 1 do
    for c = 0, inner - 1 do
      local pos = {}
      for r = 0, n - 1 do pos[#pos + 1] = (o * n + r) * inner + c + 1 end
      fn(pos)
    end
  end
end

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end
local function same_shape(t, s, what)
  T.eq(shape_str(t:shape()), shape_str(s), what)
end

local function rnd(...) return sere.randn(...) end
local function leaf(t) t.requires_grad = true; return t end

-- A tensor of `shape` whose magnitudes are a shuffled grid gap, 1.05 gap,
-- 1.1 gap, ... with random signs: no zeros, no ties, and every pair of
-- values further apart than gradcheck's eps, so no perturbation changes
-- which element is the max or crosses a kink of |x|.
local function spread(shape, gap)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local u, sign = sere.rand(n):totable(), sere.randn(n):totable()
  local order = {}
  for i = 1, n do order[i] = i end
  table.sort(order, function(a, b) return u[a] < u[b] end)
  local v = {}
  for rank, i in ipairs(order) do
    local m = gap * (1 + 0.05 * (rank - 1))
    v[i] = sign[i] < 0 and -m or m
  end
  return sere.tensor(v):reshape(shape)
end

local SHAPES = {{7, 13, 5}, {1, 4, 1}, {6}, {3, 1, 8, 2}}

-- Calls fn(shape, dims, keepdim) for every shape with every dims choice
-- (false stands for "no dims": all of them) that fits it.
local function each_case(fn)
  for _, shape in ipairs(SHAPES) do
    for _, dims in ipairs({false, 1, -1, {1, -1}, {2}, {-2, 1}}) do
      if dims == false then dims = nil end
      local ok, seen = true, {}
      for _, d in ipairs(type(dims) == "table" and dims or {dims}) do
        if math.abs(d) > #shape then ok = false end
        local pos = d < 0 and d + #shape + 1 or d
        if seen[pos] then ok = false end
        seen[pos] = true
      end
      if ok then
        for _, keep in ipairs({false, true}) do fn(shape, dims, keep) end
      end
    end
  end
end

-- ---- sum, mean, var, std, norm: values ----------------------------------
T.test("sum/mean/var/std/norm match Lua loops over shapes, dims, keepdim", function()
  each_case(function(shape, dims, keep)
    local x = rnd(shape)
    local what = string.format("%s dims=%s keep=%s", shape_str(shape),
      type(dims) == "table" and shape_str(dims) or tostring(dims), tostring(keep))
    local exp, oshape = ref_reduce(x, dims, keep, lsum)
    local y = x:sum(dims, keep)
    same_shape(y, oshape, "sum shape " .. what)
    T.close(y, exp, F32_ATOL, F32_RTOL, "sum " .. what)
    T.close(x:mean(dims, keep), (ref_reduce(x, dims, keep, lmean)), F32_ATOL, F32_RTOL, "mean " .. what)
    T.close(x:var(dims, keep), (ref_reduce(x, dims, keep, lvar(1))), F32_ATOL, 1e-4, "var " .. what)
    T.close(x:var(dims, keep, 0), (ref_reduce(x, dims, keep, lvar(0))), F32_ATOL, 1e-4, "var0 " .. what)
    T.close(x:std(dims, keep), (ref_reduce(x, dims, keep, lstd(1))), F32_ATOL, 1e-4, "std " .. what)
    for _, p in ipairs({2, 1, 3, 0.5, math.huge}) do
      T.close(x:norm(p, dims, keep), (ref_reduce(x, dims, keep, lnorm(p))), F32_ATOL, 1e-4,
        "norm p=" .. p .. " " .. what)
    end
  end)
end)

T.test("module functions equal methods; norm defaults and 'inf'", function()
  local x = rnd(4, 5)
  T.eq(sere.sum(x, 2), x:sum(2))
  T.eq(sere.mean(x), x:mean())
  T.eq(sere.std(x, {1, 2}, true, 0), x:std(nil, true, 0))
  T.eq(x:norm(), x:norm(2))
  T.eq(x:norm("inf"), x:norm(math.huge))
  T.eq(x:norm("fro"), x:norm(2))
  T.eq(sere.norm(x, 1, 1), x:norm(1, 1))
end)

T.test("non-contiguous inputs: transposed, narrowed, expanded", function()
  local base = rnd(13, 7)
  local views = {
    t = base:t(),
    narrowed = rnd(9, 7, 6):narrow(1, 2, 5):narrow(3, 2, 4),
    expanded = rnd(1, 7):expand(5, 7),
    permuted = rnd(3, 4, 5):permute(3, 1, 2),
  }
  for name, v in pairs(views) do
    T.eq(v:is_contiguous(), false, name .. " is a strided view")
    for _, dims in ipairs({false, 1, 2, {1, 2}, -1}) do
      if dims == false then dims = nil end
      local what = name .. " dims " .. tostring(dims)
      T.close(v:sum(dims), (ref_reduce(v, dims, false, lsum)), F32_ATOL, F32_RTOL, "sum " .. what)
      T.close(v:var(dims, true), (ref_reduce(v, dims, true, lvar(1))), F32_ATOL, 1e-4, "var " .. what)
      T.close(v:norm(3, dims), (ref_reduce(v, dims, false, lnorm(3))), F32_ATOL, 1e-4, "norm " .. what)
    end
  end
end)

T.test("0-dim and empty inputs", function()
  local s = sere.tensor(3.5)
  T.eq(s:sum():item(), 3.5); T.eq(#s:sum():shape(), 0)
  T.eq(s:sum(1):item(), 3.5); T.eq(s:sum(-1, true):item(), 3.5)
  T.eq(s:mean():item(), 3.5)
  T.eq(s:norm():item(), 3.5)
  T.eq(s:var(nil, false, 0):item(), 0.0)
  T.eq(s:max():item(), 3.5); T.eq(s:argmax():item(), 1)
  local v, i = s:max(1)
  T.eq(v:item(), 3.5); T.eq(i:item(), 1); T.eq(#i:shape(), 0)
  T.eq(s:softmax():item(), 1.0); T.eq(s:log_softmax():item(), 0.0)
  local e = sere.zeros(3, 0, 2)
  T.eq(e:sum():item(), 0.0)
  same_shape(e:sum(2), {3, 2}); T.eq(e:sum(2), sere.zeros(3, 2))
  same_shape(e:sum(1), {0, 2})
  T.eq(e:mean(2):totable()[1][1] ~= e:mean(2):totable()[1][1], true, "mean over an empty dim is NaN")
  T.eq(sere.zeros(0, 3, {dtype = "i64"}):sum(1), sere.zeros(3, {dtype = "i64"}))
  same_shape(e:softmax(2), {3, 0, 2})
end)

T.test("multi-threaded paths: big rows, big columns, few outputs", function()
  for _, c in ipairs({{shape = {300, 220}, dims = 1}, {shape = {300, 220}, dims = 2},
                      {shape = {3, 40000}, dims = 1}, {shape = {40000, 3}, dims = 1},
                      {shape = {2, 70000}, dims = 2}, {shape = {6, 50, 130}, dims = {1, 3}},
                      {shape = {70000}, dims = nil}}) do
    local x = rnd(c.shape)
    local what = shape_str(c.shape) .. " dims " .. (type(c.dims) == "table" and shape_str(c.dims) or tostring(c.dims))
    T.close(x:sum(c.dims), (ref_reduce(x, c.dims, false, lsum)), 1e-4, F32_RTOL, "sum " .. what)
    T.close(x:var(c.dims), (ref_reduce(x, c.dims, false, lvar(1))), 1e-4, 1e-4, "var " .. what)
    local xi = sere.randint(-1000, 1000, c.shape)
    T.eq(xi:sum(c.dims), (ref_reduce(xi, c.dims, false, lsum)), "int sum " .. what)
  end
end)

T.test("long sums are accurate: 10^6 values to 1e-6, 2^25 ones exactly", function()
  local x = sere.rand(1000000)
  local ref = lsum(x:totable())
  local got = x:sum():item()
  T.eq(math.abs(got - ref) / ref < 1e-6, true, string.format("sum %.9g vs %.9g", got, ref))
  local m = x:view(1000, 1000)
  T.close(m:sum(1), (ref_reduce(m, 1, false, lsum)), 1e-4, 1e-6, "column sums of 1000 rows")
  T.eq(sere.ones(33554432):sum():item(), 33554432.0)
  T.eq(sere.ones(33554432):mean():item(), 1.0)
end)

T.test("sums around the kernel's 16- and 128-element blocks match a float64 reference", function()
  -- rows: the reduced dim is innermost; columns: the reduced dim leads
  for _, n in ipairs({1, 15, 16, 17, 127, 128, 129, 255, 257, 1031}) do
    local x = rnd(3, n)
    T.close(x:sum(2), (ref_reduce(x, 2, false, lsum)), 1e-5, F32_RTOL, "row sums of length " .. n)
    T.close(x:mean(), lmean(values_of(x)), 1e-6, F32_RTOL, "mean of " .. 3 * n)
    local c = rnd(n, 5)
    T.close(c:sum(1), (ref_reduce(c, 1, false, lsum)), 1e-5, F32_RTOL, "column sums over " .. n .. " rows")
  end
  -- strided inputs of odd sizes, big enough for the threaded paths
  local views = {
    transposed = rnd(301, 263):t(),
    narrowed = rnd(389, 300):narrow(2, 3, 257):narrow(1, 2, 385),
  }
  for name, v in pairs(views) do
    for _, dims in ipairs({false, 1, 2}) do
      if dims == false then dims = nil end
      T.close(v:sum(dims), (ref_reduce(v, dims, false, lsum)), 1e-4, F32_RTOL, "sum " .. name .. " dims " .. tostring(dims))
    end
  end
end)

T.test("integer inputs: exact i64 sums, bool counts, max/min exact", function()
  local big = sere.tensor({9007199254740993, 1, -5}) -- 2^53 + 1: not representable in double
  T.eq(big:dtype(), "i64")
  T.eq(big:sum():dtype(), "i64")
  T.eq(big:sum():item(), 9007199254740989)
  local m = sere.tensor({{1, 2, 3}, {4, 5, 6}}, {dtype = "i32"})
  T.eq(m:sum(1), {5, 7, 9})
  T.eq(m:sum(2, true), {{6}, {15}})
  T.eq(m:sum():dtype(), "i64")
  T.eq(sere.tensor({true, false, true, true}):sum():item(), 3)
  T.eq(sere.tensor({{true, false}, {true, true}}):sum(1), {2, 1})
  T.eq(sere.tensor({1, 200, 7}, {dtype = "u8"}):sum():item(), 208)
  local huge = sere.tensor({1152921504606846976, 1152921504606846977, 3}) -- 2^60, 2^60 + 1
  local v, i = huge:max(1)
  T.eq(v:item(), 1152921504606846977); T.eq(i:item(), 2); T.eq(v:dtype(), "i64")
  T.eq(huge:min():item(), 3)
  T.eq(m:max():dtype(), "i32"); T.eq(m:max():item(), 6)
  local mv, mi = m:min(2)
  T.eq(mv, {1, 4}); T.eq(mi, {1, 1})
  T.eq(sere.tensor({{3, 9}, {9, 1}}):argmax(), sere.tensor(2))
  for _, op in ipairs({"mean", "var", "std", "norm", "softmax", "log_softmax"}) do
    T.raises(function() m[op](m) end, op .. ": expects a float tensor, got i32 of shape %[2, 3%]; convert it first with :float%(%)")
  end
end)

T.test("bf16 inputs compute in f32 and return bf16", function()
  local x = rnd(7, 13, 5):bfloat16()
  for _, dims in ipairs({false, 2, {1, 3}}) do
    if dims == false then dims = nil end
    local y = x:sum(dims)
    T.eq(y:dtype(), "bf16")
    T.close(y, (ref_reduce(x, dims, false, lsum)), BF16_ATOL * 10, BF16_RTOL, "bf16 sum")
    T.close(x:mean(dims), (ref_reduce(x, dims, false, lmean)), BF16_ATOL, BF16_RTOL, "bf16 mean")
    T.close(x:std(dims), (ref_reduce(x, dims, false, lstd(1))), BF16_ATOL, BF16_RTOL, "bf16 std")
    T.close(x:norm(2, dims), (ref_reduce(x, dims, false, lnorm(2))), BF16_ATOL, BF16_RTOL, "bf16 norm")
  end
  local v, i = x:max(2)
  T.eq(v:dtype(), "bf16")
  T.eq(v, (ref_reduce(x, 2, false, function(xs) return math.max(table.unpack(xs)) end)), "bf16 max is exact")
  T.eq(i:dtype(), "i64")
  local s = x:softmax(2)
  T.eq(s:dtype(), "bf16")
  T.close(s, x:float():softmax(2), BF16_ATOL, BF16_RTOL, "bf16 softmax")
end)

-- ---- max, min, argmax, argmin ---------------------------------------------
local function ref_select(x, d, largest)
  local shape, v = x:shape(), values_of(x)
  local vals, idx = {}, {}
  lines(shape, d, function(pos)
    local bi = 1
    for r = 2, #pos do
      local a, b = v[pos[r]], v[pos[bi]]
      if (largest and a > b) or (not largest and a < b) then bi = r end
    end
    vals[#vals + 1] = v[pos[bi]]; idx[#idx + 1] = bi
  end)
  local oshape = {}
  for k = 1, #shape do if k ~= d then oshape[#oshape + 1] = shape[k] end end
  return nest(vals, oshape), nest(idx, oshape)
end

T.test("max/min with a dim: values and 1-based indices, keepdim, negative dims", function()
  for _, shape in ipairs({{7, 13, 5}, {1, 4, 1}, {6}, {40000, 2}}) do
    local x = rnd(shape)
    for d = 1, #shape do
      for _, largest in ipairs({true, false}) do
        local ev, ei = ref_select(x, d, largest)
        local op = largest and "max" or "min"
        local v, i = x[op](x, d)
        T.eq(v, ev, op .. " values " .. shape_str(shape) .. " dim " .. d)
        T.eq(i, ei, op .. " indices " .. shape_str(shape) .. " dim " .. d)
        local vk, ik = x[op](x, d - #shape - 1, true)
        local ks = x:shape(); ks[d] = 1
        same_shape(vk, ks); same_shape(ik, ks)
        T.eq(vk:reshape(-1), v:reshape(-1)); T.eq(ik:reshape(-1), i:reshape(-1))
        local a = largest and x:argmax(d) or x:argmin(d)
        T.eq(a, ei, "arg" .. op)
      end
    end
  end
end)

T.test("max/min over everything; argmax into the flattened tensor; ties; NaN", function()
  local x = rnd(5, 6):t()
  local flat = values_of(x)
  local bi = 1
  for k = 2, #flat do if flat[k] > flat[bi] then bi = k end end
  T.eq(x:max():item(), flat[bi]); T.eq(#x:max():shape(), 0)
  T.eq(x:argmax():item(), bi); T.eq(x:argmax():dtype(), "i64")
  same_shape(x:argmax(nil, true), {1, 1})
  local t = sere.tensor({{1, 5, 5, 0}, {2, 2, -1, -1}})
  local v, i = t:max(2)
  T.eq(i, {2, 1}, "first maximum wins")
  v, i = t:min(2)
  T.eq(i, {4, 3}, "first minimum wins")
  T.eq(t:argmax(), sere.tensor(2)); T.eq(t:argmin(), sere.tensor(7))
  local n = sere.tensor({1, 0 / 0, 3, 0 / 0})
  local nv, ni = n:max(1)
  T.eq(nv:item() ~= nv:item(), true, "max propagates NaN"); T.eq(ni:item(), 2)
  T.eq(n:min():item() ~= n:min():item(), true, "min propagates NaN")
  T.eq(sere.tensor({-0.0, 0.0}):argmax():item(), 1, "-0 equals +0")
  T.eq(sere.tensor({-math.huge, -1e30}):argmax():item(), 2)
end)

-- ---- softmax, log_softmax --------------------------------------------------
local function ref_softmax(x, d, log)
  local shape, v = x:shape(), values_of(x)
  local out = {}
  lines(shape, d, function(pos)
    local m = -math.huge
    for _, p in ipairs(pos) do m = math.max(m, v[p]) end
    local s = 0
    for _, p in ipairs(pos) do s = s + math.exp(v[p] - m) end
    for _, p in ipairs(pos) do
      out[p] = log and (v[p] - m - math.log(s)) or math.exp(v[p] - m) / s
    end
  end)
  return nest(out, shape)
end

T.test("softmax/log_softmax match Lua over every dim, layouts and sizes", function()
  for _, shape in ipairs({{7, 13, 5}, {4, 1}, {3, 300}, {2, 600, 3}, {1000}, {20, 2000}}) do
    local x = rnd(shape)
    for d = 1, #shape do
      local what = shape_str(shape) .. " dim " .. d
      T.close(x:softmax(d), ref_softmax(x, d, false), 1e-6, 1e-5, "softmax " .. what)
      T.close(x:log_softmax(d), ref_softmax(x, d, true), 1e-5, 1e-5, "log_softmax " .. what)
    end
  end
  local x = rnd(6, 9)
  T.eq(x:softmax(), x:softmax(-1)); T.eq(sere.softmax(x, 1), x:softmax(1))
  T.eq(sere.log_softmax(x), x:log_softmax(2))
  local tx = rnd(9, 6):t()
  T.close(tx:softmax(1), ref_softmax(tx, 1, false), 1e-6, 1e-5, "transposed softmax")
  T.close(tx:log_softmax(2), ref_softmax(tx, 2, true), 1e-5, 1e-5, "transposed log_softmax")
end)

T.test("softmax is stable: large, equal and -inf logits", function()
  local x = sere.tensor({{1000, 1001, 1002}, {-1000, -1000, -1000}, {0, -math.huge, 1}})
  local s = x:softmax(2):totable()
  local e = math.exp(1)
  T.close(s[1][3], e * e / (1 + e + e * e), 1e-6, 1e-6, "shifted logits")
  T.close(s[2][1], 1 / 3, 1e-6, 1e-6, "equal logits")
  T.eq(s[3][2], 0.0, "exp(-inf) is 0")
  T.close(x:log_softmax(2):totable()[1][1], -2 - math.log(1 + math.exp(-1) + math.exp(-2)), 1e-5, 1e-6)
  T.eq(x:log_softmax(2):totable()[3][2], -math.huge)
  local n = sere.tensor({1, 0 / 0, 2}):softmax():totable()
  T.eq(n[1] ~= n[1], true, "NaN poisons its row")
end)

-- ---- topk -------------------------------------------------------------------
local function ref_topk(x, k, d, largest, sorted)
  local shape, v = x:shape(), values_of(x)
  local ks = {}
  for i = 1, #shape do ks[i] = shape[i] end
  ks[d] = k
  local ov, oi = {}, {}
  local inner = 1
  for i = d + 1, #shape do inner = inner * shape[i] end
  local line = 0
  lines(shape, d, function(pos)
    local e = {}
    for r, p in ipairs(pos) do e[r] = {v = v[p], i = r} end
    table.sort(e, function(a, b)
      if a.v ~= b.v then if largest then return a.v > b.v else return a.v < b.v end end
      return a.i < b.i
    end)
    local top = {}
    for j = 1, k do top[j] = e[j] end
    if not sorted then table.sort(top, function(a, b) return a.i < b.i end) end
    local o, c = line // inner, line % inner
    for j = 1, k do
      local at = (o * k + (j - 1)) * inner + c + 1
      ov[at] = top[j].v; oi[at] = top[j].i
    end
    line = line + 1
  end)
  return nest(ov, ks), nest(oi, ks)
end

T.test("topk values and indices for dims, largest/smallest, sorted/unsorted", function()
  for _, shape in ipairs({{7, 13, 5}, {30}, {2, 50000}}) do
    local x = rnd(shape)
    for d = 1, #shape do
      for _, k in ipairs({1, 3, shape[d]}) do
        for _, largest in ipairs({true, false}) do
          for _, sorted in ipairs({true, false}) do
            if k <= shape[d] and (shape[d] < 1000 or k == 3) then
              local v, i = x:topk(k, d, largest, sorted)
              local ev, ei = ref_topk(x, k, d, largest, sorted)
              local what = string.format("%s k=%d dim=%d largest=%s sorted=%s", shape_str(shape), k, d,
                tostring(largest), tostring(sorted))
              T.eq(v, ev, "values " .. what)
              T.eq(i, ei, "indices " .. what)
            end
          end
        end
      end
    end
  end
  local x = sere.tensor({{5, 1, 5, 3}, {0, 9, 9, 9}}, {dtype = "i32"})
  local v, i = x:topk(2)
  T.eq(v, {{5, 5}, {9, 9}}); T.eq(i, {{1, 3}, {2, 3}}, "ties keep index order")
  T.eq(v:dtype(), "i32")
  v, i = sere.topk(x, 1, 1, false)
  T.eq(v, {{0, 1, 5, 3}}); T.eq(i, {{2, 1, 1, 1}})
  local tx = rnd(8, 5):t()
  local tv, ti = tx:topk(3, 2)
  local ev, ei = ref_topk(tx, 3, 2, true, true)
  T.eq(tv, ev, "transposed"); T.eq(ti, ei)
  local zv = x:topk(0)
  same_shape(zv, {2, 0})
  local bv = rnd(4, 9):bfloat16()
  local bvv = bv:topk(2)
  T.eq(bvv:dtype(), "bf16"); T.eq(bvv, (ref_topk(bv, 2, 2, true, true)))
end)

-- ---- gradients --------------------------------------------------------------
T.test("gradcheck: sum and mean (dims, keepdim, broadcast and strided inputs)", function()
  local x = leaf(rnd(4, 5, 3))
  gradcheck(function(a) return a:sum() end, {x})
  gradcheck(function(a) return a:sum({1, 3}) end, {x})
  gradcheck(function(a) return a:sum(2, true) end, {x})
  gradcheck(function(a) return a:mean(-1) end, {x})
  gradcheck(function(a) return a:mean({1, 2}, true) end, {x})
  gradcheck(function(a) return a:transpose(1, 3):sum(2) end, {x})
  gradcheck(function(a) return a:narrow(2, 2, 3):mean(1) end, {x})
  local row, col = leaf(rnd(1, 5)), leaf(rnd(4, 1))
  gradcheck(function(a) return a:expand(3, 4, 5):sum({1, 3}) end, {row})
  gradcheck(function(a) return a:expand(4, 6):mean(2) end, {col})
  gradcheck(function(a) return a:expand(4, 6):sum() end, {col})
end)

T.test("gradient values: sum_to of broadcasts, max ties, mean scale", function()
  local row = leaf(sere.ones(1, 5))
  row:expand(3, 4, 5):sum():backward()
  T.eq(row.grad, sere.full({1, 5}, 12.0), "expand [1,5] -> [3,4,5]: sum_to gives 12 per element")
  local col = leaf(sere.ones(4, 1))
  col:expand(4, 6):sum():backward()
  T.eq(col.grad, sere.full({4, 1}, 6.0))
  local x = leaf(sere.tensor({1.0, 3.0, 3.0, 2.0}))
  x:max():backward()
  T.eq(x.grad, {0, 1, 0, 0}, "the first maximum gets the gradient")
  local y = leaf(sere.tensor({{1.0, 2.0}, {4.0, 8.0}}))
  y:mean():backward()
  T.eq(y.grad, sere.full({2, 2}, 0.25))
  local z = leaf(sere.tensor({3.0, -4.0}))
  z:norm():backward()
  T.close(z.grad, {0.6, -0.8}, 1e-6, 1e-6)
  local w = leaf(sere.tensor({-2.0, 1.0, 2.0}))
  w:norm(math.huge):backward()
  T.eq(w.grad, {-0.5, 0, 0.5}, "inf-norm ties share the gradient")
  local bf = leaf(rnd(3, 4):bfloat16())
  bf:sum():backward()
  T.eq(bf.grad:dtype(), "bf16"); T.eq(bf.grad, sere.ones(3, 4))
end)

T.test("gradcheck: var and std (corrections, dims, strided)", function()
  local x = leaf(rnd(5, 4, 3))
  gradcheck(function(a) return a:var() end, {x})
  gradcheck(function(a) return a:var({1, 3}, true) end, {x})
  gradcheck(function(a) return a:var(2, false, 0) end, {x})
  gradcheck(function(a) return a:std(-1) end, {x})
  gradcheck(function(a) return a:std({2, 3}, false, 0) end, {x})
  gradcheck(function(a) return a:transpose(1, 2):std(1) end, {x})
  local row = leaf(rnd(1, 4))
  gradcheck(function(a) return a:expand(3, 4):contiguous():var(nil, false, 0) end, {row}, {atol = 2e-3})
end)

T.test("gradcheck: norm p = 1, 2, 3, inf", function()
  local x = leaf(spread({4, 5}, 0.3))
  for _, p in ipairs({1, 2, 3, 0.7, math.huge}) do
    gradcheck(function(a) return a:norm(p) end, {x})
    gradcheck(function(a) return a:norm(p, 2) end, {x})
    gradcheck(function(a) return a:norm(p, 1, true) end, {x})
    gradcheck(function(a) return a:t():norm(p, 2) end, {x})
  end
end)

T.test("gradcheck: max/min values and topk values", function()
  local x = leaf(spread({4, 6, 3}, 0.3))
  gradcheck(function(a) return a:max() end, {x})
  gradcheck(function(a) return (a:max(2)) end, {x})
  gradcheck(function(a) return (a:min(-1, true)) end, {x})
  gradcheck(function(a) return (a:min(1)) end, {x})
  gradcheck(function(a) return (a:transpose(1, 2):max(3)) end, {x})
  gradcheck(function(a) return (a:topk(2, 2)) end, {x})
  gradcheck(function(a) return (a:topk(3, 1, false, false)) end, {x})
  gradcheck(function(a) return (a:permute(3, 1, 2):topk(4, -1)) end, {x})
end)

T.test("gradcheck: softmax and log_softmax over the last and a middle dim", function()
  local x = leaf(rnd(3, 5, 4))
  for _, d in ipairs({-1, 2, 1}) do
    gradcheck(function(a) return a:softmax(d) end, {x})
    gradcheck(function(a) return a:log_softmax(d) end, {x})
  end
  gradcheck(function(a) return a:transpose(1, 3):softmax(-1) end, {x})
  local row = leaf(rnd(1, 4))
  gradcheck(function(a) return a:expand(3, 4):log_softmax(1) end, {row})
  local b = leaf(rnd(2, 8):bfloat16())
  b:softmax():sum(2):sum():backward()
  T.eq(b.grad:dtype(), "bf16")
  T.close(b.grad, sere.zeros(2, 8), 1e-2, 0, "softmax rows sum to 1: zero gradient")
end)

T.test("saved outputs do not leak (no reference cycle through the node)", function()
  local x = leaf(rnd(64, 64))
  collectgarbage(); collectgarbage()
  local before = sere.storage_bytes()
  local ops = {x.softmax, x.std, x.var, x.log_softmax,
    function(a) return a:norm(3) end, function(a) return (a:topk(3)) end}
  for _ = 1, 5 do
    for _, op in ipairs(ops) do op(x) end
  end
  collectgarbage(); collectgarbage()
  T.eq(sere.storage_bytes(), before)
end)

-- ---- errors -----------------------------------------------------------------
T.test("misuse raises errors naming the op and the shapes", function()
  local x = rnd(2, 3, 4)
  T.raises(function() x:sum(4) end, "sum: dim 4 out of range for a tensor with 3 dims")
  T.raises(function() x:mean(0) end, "mean: dims are 1%-based")
  T.raises(function() x:sum({1, 1}) end, "sum: dim 1 appears twice")
  T.raises(function() x:var({1, -3}) end, "var: dim 1 appears twice")
  T.raises(function() x:sum("a") end, "sum: argument #2: expected a dim or a table of dims")
  T.raises(function() x:max(5) end, "max: dim 5 out of range")
  T.raises(function() x:argmin(9) end, "argmin: dim 9 out of range")
  T.raises(function() x:softmax(4) end, "softmax: dim 4 out of range")
  T.raises(function() x:topk(5) end, "topk: k = 5 is out of range for dim 3 of size 4 %(shape %[2, 3, 4%]%)")
  T.raises(function() x:topk(-1, 1) end, "topk: k = %-1 is out of range")
  T.raises(function() x:topk(1, 7) end, "topk: dim 7 out of range")
  T.raises(function() x:norm(0) end, "norm: p must be > 0")
  T.raises(function() x:norm(-1) end, "norm: p must be > 0")
  T.raises(function() x:norm("nuc") end, "norm: unknown p 'nuc'")
  T.raises(function() x:var(nil, false, -1) end, "var: correction must be >= 0")
  T.raises(function() x:max(x) end, "max: takes a dim, not a tensor")
  T.raises(function() sere.zeros(0, 3):max() end, "max: cannot reduce an empty tensor %(shape %[0, 3%]%)")
  T.raises(function() sere.zeros(2, 0):min(2) end, "min: cannot reduce dim 2 of size 0 %(shape %[2, 0%]%)")
  T.raises(function() sere.zeros(2, 0):argmax() end, "argmax: cannot reduce an empty tensor")
  T.raises(function() sere.sum(3) end, "sum: argument #1: expected a tensor")
end)

T.finish()
