-- test_index.lua — cat, stack, chunk, split, unbind, index_select, gather,
-- scatter_add, masked_select and nonzero: values against Lua loops over
-- totable() (contiguous and strided inputs, mixed dtypes, 1-based index
-- tensors), finite-difference gradients (repeated indices, broadcasting,
-- more inputs than one autograd node holds), and error messages.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

sere.manual_seed(77)

local function rnd(shape) local x = sere.randn(shape); x.requires_grad = true; return x end
local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

-- Element of a nested table at a 1-based position list.
local function at(tbl, pos)
  local v = tbl
  for _, p in ipairs(pos) do v = v[p] end
  return v
end

-- Calls fn(pos) for every 1-based position of `shape`, row-major.
local function each(shape, fn)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  for flat = 0, n - 1 do
    local pos, r = {}, flat
    for i = #shape, 1, -1 do pos[i] = r % shape[i] + 1; r = r // shape[i] end
    fn(pos)
  end
end

-- Exact comparison of tensor `got` with an expected value computed per position.
local function expect(got, shape, value_at, what)
  T.eq(table.concat(got:shape(), ","), table.concat(shape, ","), what .. " shape")
  local g = got:totable()
  each(shape, function(pos)
    local v, w = at(g, pos), value_at(pos)
    if v ~= w then error(string.format("%s at {%s}: got %s, expected %s", what, table.concat(pos, ","), v, w), 3) end
  end)
end

-- ---- cat / stack ----------------------------------------------------------
T.test("cat along every dim matches loops", function()
  local a, b, c = sere.randn(2, 3, 4), sere.randn(2, 5, 4), sere.randn(2, 1, 4)
  local at_, bt, ct = a:totable(), b:totable(), c:totable()
  expect(sere.cat({a, b, c}, 2), {2, 9, 4}, function(p)
    local j = p[2]
    if j <= 3 then return at_[p[1]][j][p[3]] elseif j <= 8 then return bt[p[1]][j - 3][p[3]] end
    return ct[p[1]][j - 8][p[3]]
  end, "cat dim 2")
  local x, y = sere.randn(2, 3), sere.randn(4, 3)
  local xt, yt = x:totable(), y:totable()
  expect(sere.cat({x, y}), {6, 3}, function(p)
    return p[1] <= 2 and xt[p[1]][p[2]] or yt[p[1] - 2][p[2]]
  end, "cat default dim 1")
  local z = sere.randn(3, 2)
  local zt = z:totable()
  expect(sere.cat({x:t(), z}, -1), {3, 4}, function(p)
    return p[2] <= 2 and xt[p[2]][p[1]] or zt[p[1]][p[2] - 2]
  end, "cat of a transposed tensor")
end)

T.test("cat with strided inputs, dtype promotion and empty 1-D tensors", function()
  local a = sere.randn(3, 4)
  local n = sere.randn(3, 7):narrow(2, 2, 2)
  local at_, nt = a:totable(), n:totable()
  local r = sere.cat({a, n}, 2)
  expect(r, {3, 6}, function(p) return p[2] <= 4 and at_[p[1]][p[2]] or nt[p[1]][p[2] - 4] end, "narrowed input")
  local i = sere.tensor({{1, 2}, {3, 4}, {5, 6}})
  local m = sere.cat({i, a}, 2)
  T.eq(m:dtype(), "f32")
  expect(m, {3, 6}, function(p) return p[2] <= 2 and (2 * (p[1] - 1) + p[2]) * 1.0 or at_[p[1]][p[2] - 2] end,
    "i64 + f32")
  local h = a:bfloat16()
  T.eq(sere.cat({h, h}):dtype(), "bf16")
  T.eq(sere.cat({h, a}):dtype(), "f32")
  T.eq(sere.cat({i, i}):dtype(), "i64")
  local e = sere.cat({sere.zeros(0), a, sere.zeros(0)}, 2)
  T.eq(e, a)
  T.eq(shape_str(sere.cat({sere.zeros(0), sere.zeros(0)})), "[0]")
  T.eq(sere.cat({a}):shares_storage(a), false)
end)

T.test("cat errors", function()
  T.raises(function() sere.cat({sere.randn(3, 3), sere.randn(2, 4)}) end,
    "cat: tensor 2 has shape %[2, 4%] but tensor 1 has shape %[3, 3%]; sizes must match except in dim 1")
  T.raises(function() sere.cat({sere.randn(3, 3), sere.randn(3)}, 1) end, "tensor 2 has shape %[3%]")
  T.raises(function() sere.cat({sere.tensor(1.0), sere.tensor(2.0)}) end, "0%-dim")
  T.raises(function() sere.cat({}) end, "non%-empty")
  T.raises(function() sere.cat({sere.randn(2), 3}) end, "element 2 of the table is a number")
  T.raises(function() sere.cat({sere.randn(2, 2)}, 3) end, "dim 3 out of range")
  T.raises(function() sere.cat(sere.randn(2)) end, "expected a table of tensors")
end)

T.test("stack inserts a new dim", function()
  local a, b, c = sere.randn(2, 3), sere.randn(2, 3), sere.randn(3, 2):t()
  local ts = {a:totable(), b:totable(), c:totable()}
  expect(sere.stack({a, b, c}), {3, 2, 3}, function(p) return ts[p[1]][p[2]][p[3]] end, "stack dim 1")
  expect(sere.stack({a, b, c}, 2), {2, 3, 3}, function(p) return ts[p[2]][p[1]][p[3]] end, "stack dim 2")
  expect(sere.stack({a, b, c}, -1), {2, 3, 3}, function(p) return ts[p[3]][p[1]][p[2]] end, "stack dim -1")
  expect(sere.stack({sere.tensor(1), sere.tensor(5)}), {2}, function(p) return p[1] == 1 and 1 or 5 end, "0-dim")
  T.raises(function() sere.stack({a, sere.randn(3, 2)}) end,
    "stack: tensor 2 has shape %[3, 2%] but tensor 1 has shape %[2, 3%]")
  T.raises(function() sere.stack({a, b}, 4) end, "dim 4 out of range")
end)

T.test("cat and stack gradients", function()
  gradcheck(function(a, b, c) return sere.cat({a, b:t(), c}, 2) end, {rnd({3, 2}), rnd({4, 3}), rnd({3, 1})})
  gradcheck(function(a, b) return sere.cat({a, b}) end, {rnd({2, 3}), rnd({1, 3})})
  gradcheck(function(a, b) return sere.cat({sere.zeros(0), a, b:narrow(3, 2, 2)}, 3) end,
    {rnd({2, 3, 2}), rnd({2, 3, 5})})
  local fixed = sere.randn(2, 2)
  gradcheck(function(a) return sere.cat({fixed, a, fixed}, 1) end, {rnd({3, 2})})
  gradcheck(function(a, b, c) return sere.stack({a, b, c}, 2) end, {rnd({2, 3}), rnd({2, 3}), rnd({2, 3})})
  gradcheck(function(a, b) return sere.stack({a, b:t()}, -1) end, {rnd({2, 3}), rnd({3, 2})})
end)

T.test("cat of more tensors than one autograd node holds", function()
  local xs = {}
  for i = 1, 19 do xs[i] = rnd({2, i % 3 + 1}) end
  local y = sere.cat(xs, 2)
  local col = 0
  local yt = y:totable()
  for i = 1, 19 do
    local xt = xs[i]:totable()
    for j = 1, #xt[1] do
      T.eq(yt[2][col + j], xt[2][j], "value of piece " .. i)
    end
    col = col + #xt[1]
  end
  T.eq(col, y:shape()[2])
  gradcheck(function(...) return sere.cat({...}, 2) end, xs)
  local ss = {}
  for i = 1, 11 do ss[i] = rnd({3}) end
  gradcheck(function(...) return sere.stack({...}) end, ss)
end)

-- ---- chunk / split / unbind ------------------------------------------------
T.test("chunk, split and unbind return views of the right sizes", function()
  local t = sere.randn(7, 4)
  local function sizes(list, dim)
    local s = {}
    for i, p in ipairs(list) do s[i] = p:shape()[dim] end
    return table.concat(s, ",")
  end
  T.eq(sizes(t:chunk(3), 1), "3,3,1")
  T.eq(sizes(t:chunk(3, 2), 2), "2,2")       -- ceil(4 / 3) = 2: only two pieces, as in PyTorch
  T.eq(sizes(t:chunk(7), 1), "1,1,1,1,1,1,1")
  T.eq(sizes(t:chunk(10), 1), "1,1,1,1,1,1,1")
  T.eq(sizes(t:split(2), 1), "2,2,2,1")
  T.eq(sizes(t:split({1, 4, 2}), 1), "1,4,2")
  T.eq(sizes(t:split({1, 3}, -1), 2), "1,3")
  T.eq(sizes(sere.split(t, 3, 2), 2), "3,1")
  local pieces = t:chunk(3)
  T.eq(pieces[2]:shares_storage(t), true)
  T.eq(pieces[2], t:narrow(1, 4, 3))
  T.eq(t:split({1, 4, 2})[3], t:narrow(1, 6, 2))
  local u = t:unbind(2)
  T.eq(#u, 4)
  T.eq(u[3], t:select(2, 3))
  T.eq(#t:unbind(), 7)
  T.eq(u[1]:shares_storage(t), true)
  T.eq(#sere.zeros(0, 2):chunk(3), 3)
  T.raises(function() t:chunk(0) end, "at least 1")
  T.raises(function() t:split({2, 2}) end, "split: sizes sum to 4 but dim 1 has size 7")
  T.raises(function() t:split(0) end, "at least 1")
  T.raises(function() t:split(2, 3) end, "dim 3 out of range")
  T.raises(function() sere.tensor(1.0):unbind() end, "0%-dim")
end)

T.test("chunk and split pieces pass gradcheck", function()
  gradcheck(function(x) return x:chunk(3)[2] end, {rnd({7, 4})})
  gradcheck(function(x) local p = x:chunk(2, 2); return sere.cat({p[2], p[1]}, 2) end, {rnd({3, 4})})
  gradcheck(function(x) return x:split({1, 2, 3}, 2)[3] end, {rnd({2, 6})})
  gradcheck(function(x) local u = x:unbind(2); return sere.stack({u[3], u[1]}) end, {rnd({2, 3})})
end)

-- ---- index_select -----------------------------------------------------------
T.test("index_select matches loops (repeated indices, i32, strided source)", function()
  local t = sere.randn(4, 5, 3)
  local tt = t:totable()
  local idx = sere.tensor({5, 1, 5, 2})
  local it = idx:totable()
  expect(t:index_select(2, idx), {4, 4, 3}, function(p) return tt[p[1]][it[p[2]]][p[3]] end, "dim 2")
  expect(t:index_select(-1, sere.tensor({3, 3}, {dtype = "i32"})), {4, 5, 2},
    function(p) return tt[p[1]][p[2]][3] end, "i32 index, dim -1")
  expect(sere.index_select(t, 1, sere.tensor({4})), {1, 5, 3}, function(p) return tt[4][p[2]][p[3]] end, "dim 1")
  local s = t:transpose(1, 3)
  expect(s:index_select(2, idx), {3, 4, 4}, function(p) return tt[p[3]][it[p[2]]][p[1]] end, "transposed source")
  local i64 = sere.tensor({{10, 20}, {30, 40}})
  expect(i64:index_select(1, sere.tensor({2, 2, 1})), {3, 2}, function(p)
    return ({{30, 40}, {30, 40}, {10, 20}})[p[1]][p[2]]
  end, "i64 values")
  T.eq(shape_str(t:index_select(2, sere.tensor({}, {dtype = "i64"}))), "[4, 0, 3]")
end)

T.test("index_select gradient accumulates repeated indices", function()
  gradcheck(function(x) return x:index_select(2, sere.tensor({5, 1, 5, 2, 5})) end, {rnd({3, 5, 2})})
  gradcheck(function(x) return x:index_select(1, sere.tensor({2, 2})) end, {rnd({3, 4})})
  gradcheck(function(x) return x:t():index_select(2, sere.tensor({1, 3, 1})) end, {rnd({3, 4})})
  local x = rnd({4})
  x:index_select(1, sere.tensor({3, 3, 3, 1})):backward(sere.ones(4))
  T.eq(x.grad, sere.tensor({1, 0, 3, 0}, {dtype = "f32"}))
end)

T.test("index_select errors", function()
  local t = sere.randn(5, 3)
  T.raises(function() t:index_select(1, sere.tensor({1, 6})) end,
    "index_select: index 6 is out of range for dim 1 of size 5 %(valid: 1 to 5%)")
  T.raises(function() t:index_select(1, sere.tensor({0})) end, "index 0 is out of range")
  T.raises(function() t:index_select(2, sere.tensor({-1})) end, "index %-1 is out of range for dim 2")
  T.raises(function() t:index_select(1, sere.tensor({1.0, 2.0})) end, "index must be an i64 or i32 tensor, got f32")
  T.raises(function() t:index_select(1, sere.tensor({{1}})) end, "index must be 1%-D")
  T.raises(function() t:index_select(3, sere.tensor({1})) end, "dim 3 out of range")
  T.raises(function() t:index_select(1, {1, 2}) end, "expected a tensor")
end)

-- ---- gather / scatter_add -----------------------------------------------------
T.test("gather matches loops", function()
  local t = sere.randn(3, 4)
  local tt = t:totable()
  local idx = sere.tensor({{4, 1, 4}, {2, 2, 3}, {1, 1, 1}})
  local it = idx:totable()
  expect(t:gather(2, idx), {3, 3}, function(p) return tt[p[1]][it[p[1]][p[2]]] end, "dim 2")
  local idx1 = sere.tensor({{3, 1, 2, 3}, {1, 1, 1, 2}})
  local i1 = idx1:totable()
  expect(t:gather(1, idx1), {2, 4}, function(p) return tt[i1[p[1]][p[2]]][p[2]] end, "dim 1")
  local s = t:t()
  local si = sere.tensor({{2}, {3}, {1}, {3}}, {dtype = "i32"})
  expect(s:gather(-1, si), {4, 1}, function(p) return tt[({2, 3, 1, 3})[p[1]]][p[1]] end, "strided, i32")
  local q = sere.tensor({{5, 6, 7}})
  expect(q:gather(2, sere.tensor({{3, 3}})), {1, 2}, function() return 7 end, "i64 data")
end)

T.test("scatter_add matches loops", function()
  local t, src = sere.randn(3, 4), sere.randn(2, 4)
  local tt, st = t:totable(), src:totable()
  local idx = sere.tensor({{3, 1, 1, 2}, {3, 3, 1, 2}})
  local it = idx:totable()
  local want = t:totable()
  for i = 1, 2 do
    for j = 1, 4 do
      local r = it[i][j]
      want[r][j] = want[r][j] + st[i][j]
    end
  end
  local out = t:scatter_add(1, idx, src)
  local ot = out:totable()
  each({3, 4}, function(p)
    T.close(ot[p[1]][p[2]], want[p[1]][p[2]], 1e-6, 1e-6, "scatter_add dim 1")
  end)
  T.eq(t:totable()[1][1], tt[1][1], "input unchanged")
  -- src larger than the index: only the indexed part is used
  local big = sere.randn(2, 5)
  local bt = big:totable()
  local o2 = sere.zeros(2, 3):scatter_add(2, sere.tensor({{1, 1}, {3, 2}}), big):totable()
  T.close(o2[1][1], bt[1][1] + bt[1][2], 1e-6, 1e-6, "repeated index sums")
  T.close(o2[2][3], bt[2][1], 1e-6, 1e-6); T.close(o2[2][2], bt[2][2], 1e-6, 1e-6)
  T.eq(o2[1][3], 0.0)
  local ints = sere.zeros(3, 1, {dtype = "i64"}):scatter_add(1, sere.tensor({{2}, {2}}), sere.tensor({{5}, {7}}))
  T.eq(ints, sere.tensor({{0}, {12}, {0}}))
end)

T.test("gather and scatter_add gradients", function()
  local idx = sere.tensor({{4, 1, 4}, {2, 2, 3}, {1, 1, 1}})
  gradcheck(function(x) return x:gather(2, idx) end, {rnd({3, 4})})
  gradcheck(function(x) return x:t():gather(1, sere.tensor({{1, 3, 3}, {2, 1, 3}})) end, {rnd({3, 4})})
  local sidx = sere.tensor({{3, 1, 1, 2}, {3, 3, 1, 2}})
  gradcheck(function(t, s) return t:scatter_add(1, sidx, s) end, {rnd({3, 4}), rnd({2, 4})})
  gradcheck(function(t, s) return t:scatter_add(2, sere.tensor({{1, 1}, {3, 2}}), s) end, {rnd({2, 3}), rnd({2, 5})})
  gradcheck(function(t, s) return t:t():scatter_add(1, sere.tensor({{2, 2}}), s:t()) end, {rnd({2, 3}), rnd({2, 1})})
end)

T.test("gather and scatter_add errors", function()
  local t = sere.randn(3, 4)
  T.raises(function() t:gather(2, sere.tensor({{5}})) end, "gather: index 5 is out of range for dim 2 of size 4")
  T.raises(function() t:gather(2, sere.tensor({1, 2})) end, "gather: index of shape %[2%] does not fit")
  T.raises(function() t:gather(2, sere.tensor({{1}, {1}, {1}, {1}})) end, "does not fit a tensor of shape %[3, 4%]")
  T.raises(function() t:gather(2, sere.tensor({{1.5}})) end, "i64 or i32")
  T.raises(function() t:scatter_add(1, sere.tensor({{1}}), sere.tensor({{1}})) end, "src has dtype i64")
  T.raises(function() t:scatter_add(1, sere.tensor({{4}}), sere.randn(1, 1)) end, "index 4 is out of range for dim 1")
  T.raises(function() t:scatter_add(1, sere.tensor({{1, 1}}), sere.randn(1, 1)) end, "and src %[1, 1%]")
end)

-- ---- masked_select / nonzero --------------------------------------------------
local function mask_of(rows)
  return sere.tensor(rows)
end

T.test("masked_select picks in row-major order, with broadcasting", function()
  local t = sere.randn(3, 4)
  local tt = t:totable()
  local m = mask_of({{true, false, true, false}, {false, false, false, false}, {true, true, false, true}})
  local mt = m:totable()
  local want = {}
  each({3, 4}, function(p) if mt[p[1]][p[2]] then want[#want + 1] = tt[p[1]][p[2]] end end)
  expect(t:masked_select(m), {#want}, function(p) return want[p[1]] end, "same shape")
  expect(t:t():masked_select(m:t()), {#want}, function(p)
    local w = {}
    each({4, 3}, function(q) if mt[q[2]][q[1]] then w[#w + 1] = tt[q[2]][q[1]] end end)
    return w[p[1]]
  end, "transposed")
  local row = mask_of({{false, true, true, false}})
  expect(t:masked_select(row), {6}, function(p) return tt[(p[1] - 1) // 2 + 1][(p[1] - 1) % 2 + 2] end,
    "mask broadcast")
  local v = sere.randn(4)
  local vt = v:totable()
  expect(v:masked_select(m), {#want}, function(p)
    local w = {}
    each({3, 4}, function(q) if mt[q[1]][q[2]] then w[#w + 1] = vt[q[2]] end end)
    return w[p[1]]
  end, "tensor broadcast")
  T.eq(t:masked_select(mask_of({{false, false, false, false}})):numel(), 0)
  T.raises(function() t:masked_select(sere.tensor({1, 0, 1, 0})) end, "mask must be a bool tensor, got i64")
  T.raises(function() t:masked_select(mask_of({true, false})) end, "masked_select: shapes %[3, 4%] and %[2%]")
end)

T.test("masked_select gradient", function()
  local m = mask_of({{true, false, true, false}, {false, true, false, false}, {true, true, false, true}})
  gradcheck(function(x) return x:masked_select(m) end, {rnd({3, 4})})
  gradcheck(function(x) return x:t():masked_select(m:t()) end, {rnd({3, 4})})
  gradcheck(function(x) return x:masked_select(m) end, {rnd({4})})   -- x broadcast over rows
  gradcheck(function(x) return x:masked_select(mask_of({false, true, true, false})) end, {rnd({3, 4})})
end)

T.test("nonzero lists 1-based positions", function()
  local t = sere.tensor({{0, 3, 0}, {-1, 0, 2}})
  expect(t:nonzero(), {3, 2}, function(p) return ({{1, 2}, {2, 1}, {2, 3}})[p[1]][p[2]] end, "2-D")
  T.eq(t:nonzero():dtype(), "i64")
  expect(sere.tensor({0.0, 0.5, 0.0, -2.0}):nonzero(), {2, 1}, function(p) return ({2, 4})[p[1]] end, "1-D f32")
  expect(t:t():nonzero(), {3, 2}, function(p) return ({{1, 2}, {2, 1}, {3, 2}})[p[1]][p[2]] end, "transposed")
  T.eq(shape_str(sere.zeros(2, 3):nonzero()), "[0, 2]")
  T.eq(shape_str(sere.tensor(5):nonzero()), "[1, 0]")
  -- round trip: the positions select the non-zero values
  local r = sere.randn(3, 5):nonzero()
  T.eq(r:shape()[1], 15)
end)

T.finish()
