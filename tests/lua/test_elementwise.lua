-- test_elementwise.lua — element-wise math: values against expectations
-- computed in Lua (doubles and integers) for every op and dtype class,
-- broadcasting, numbers on either side, non-contiguous operands, the
-- parallel path, type promotion, in-place ops and version counting, error
-- messages, and finite-difference gradient checks of every differentiable op.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

-- Tolerances. f32 results against Lua doubles: a few f32 ulps (libm's f32
-- functions are within 1-2 ulps). bf16 results: computed in f32, then
-- rounded to 8 significant bits (relative error <= 2^-9).
local F32_ATOL, F32_RTOL = 1e-6, 1e-5
local BF16_ATOL, BF16_RTOL = 1e-3, 8e-3

local function rnd(shape) local x = sere.randn(shape); x.requires_grad = true; return x end
-- Leaf with values on the grid offset + k/4.
local function rnd_grid(shape, offset)
  local x = (sere.randn(shape) * 4):round() / 4 + offset
  x.requires_grad = true
  return x
end
-- Leaf with |values| >= 0.1 (for abs, whose gradient jumps at 0).
local function rnd_nonzero(shape)
  local x = sere.randn(shape)
  x = x + x:sign() * 0.1
  x.requires_grad = true
  return x
end
-- Leaf with values in [lo, hi) (for ops with a restricted domain).
local function rnd_in(shape, lo, hi)
  local x = sere.rand(shape) * (hi - lo) + lo
  x.requires_grad = true
  return x
end

-- Element of nested table `tab` of shape `shape` at the broadcast position
-- of the 1-based output index `idx`.
local function at(tab, shape, idx)
  local lead, v = #idx - #shape, tab
  for d = 1, #shape do v = v[shape[d] == 1 and 1 or idx[lead + d]] end
  return v
end

-- f applied at every position of the broadcast shape of the arguments
-- (tensors or plain Lua values): the flat list of results and the shape.
local function reference(f, ...)
  local args = table.pack(...)
  local tabs, shapes, n = {}, {}, 0
  for i = 1, args.n do
    if sere.is_tensor(args[i]) then
      tabs[i], shapes[i] = args[i]:totable(), args[i]:shape()
      n = math.max(n, #shapes[i])
    end
  end
  local out = {}
  for d = 1, n do out[d] = 1 end
  for i = 1, args.n do
    local s = shapes[i]
    if s then for d = 1, #s do if s[d] ~= 1 then out[n - #s + d] = s[d] end end end
  end
  local res, idx, total = {}, {}, 1
  for d = 1, n do idx[d] = 1; total = total * out[d] end
  for _ = 1, total do
    local vals = {}
    for i = 1, args.n do
      if shapes[i] then vals[i] = at(tabs[i], shapes[i], idx) else vals[i] = args[i] end
    end
    res[#res + 1] = f(table.unpack(vals, 1, args.n))
    for d = n, 1, -1 do
      idx[d] = idx[d] + 1
      if idx[d] <= out[d] then break end
      idx[d] = 1
    end
  end
  return res, out
end

-- got must equal f over args elementwise: exactly for integer and bool
-- results, within (atol, rtol) for floats.
local function check(got, f, args, atol, rtol, what)
  local want, shape = reference(f, table.unpack(args))
  what = what or "check"
  T.eq(table.concat(got:shape(), "x"), table.concat(shape, "x"), what .. " shape")
  local g = got:reshape(-1):totable()
  local exact = got:dtype() ~= "f32" and got:dtype() ~= "bf16"
  for i = 1, #want do
    local a, b = g[i], want[i]
    if type(b) == "boolean" or exact then
      if a ~= b then error(string.format("%s: element %d is %s, expected %s", what, i, tostring(a), tostring(b)), 2) end
    elseif not (a ~= a and b ~= b) and math.abs(a - b) > (atol or F32_ATOL) + (rtol or F32_RTOL) * math.abs(b) then
      error(string.format("%s: element %d is %.9g, expected %.9g", what, i, a, b), 2)
    end
  end
end

local function erf(x) -- Abramowitz & Stegun 7.1.26, |error| < 1.5e-7
  local s = x < 0 and -1 or 1
  x = math.abs(x)
  local t = 1 / (1 + 0.3275911 * x)
  local poly = (((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592
  return s * (1 - poly * t * math.exp(-x * x))
end

local function round_half_even(x)
  local r = math.floor(x + 0.5)
  if r - x == 0.5 and r % 2 ~= 0 then r = r - 1 end
  return r
end

local binary_ref = {
  add = function(x, y) return x + y end, sub = function(x, y) return x - y end,
  mul = function(x, y) return x * y end, div = function(x, y) return x / y end,
  pow = function(x, y) return x ^ y end,
  maximum = function(x, y) return math.max(x, y) end, minimum = function(x, y) return math.min(x, y) end,
}

local unary_ref = {
  neg = function(x) return -x end, exp = math.exp, log = math.log, sqrt = math.sqrt,
  rsqrt = function(x) return 1 / math.sqrt(x) end, abs = math.abs,
  sign = function(x) return x > 0 and 1 or x < 0 and -1 or 0 end, sin = math.sin, cos = math.cos,
  tanh = function(x) local e = math.exp(2 * x); return (e - 1) / (e + 1) end,
  sigmoid = function(x) return 1 / (1 + math.exp(-x)) end, reciprocal = function(x) return 1 / x end,
  square = function(x) return x * x end, floor = math.floor, ceil = math.ceil, round = round_half_even,
  log1p = function(x) return math.log(1 + x) end, expm1 = function(x) return math.exp(x) - 1 end, erf = erf,
}
-- ops defined only for positive inputs (and reciprocal, kept away from 0)
local positive = {log = true, sqrt = true, rsqrt = true, reciprocal = true, log1p = true}

local function input_for(op, shape)
  if positive[op] then return sere.rand(shape) * 2 + 0.2 end
  return sere.randn(shape)
end

T.test("binary ops on f32 match Lua, with numbers on either side", function()
  for op, f in pairs(binary_ref) do
    local a, b = sere.rand(3, 4) + 0.5, sere.randn(3, 4)
    check(a[op](a, b), f, {a, b}, nil, nil, op)
    check(sere[op](a, b), f, {a, b}, nil, nil, "sere." .. op)
    check(a[op](a, 1.5), f, {a, 1.5}, nil, nil, op .. " number")
    check(sere[op](2.5, b), f, {2.5, b}, nil, nil, "number " .. op)
  end
  local a, b = sere.rand(2, 3) + 0.5, sere.randn(2, 3)
  check(a + b, binary_ref.add, {a, b}); check(a - b, binary_ref.sub, {a, b})
  check(a * b, binary_ref.mul, {a, b}); check(a / b, binary_ref.div, {a, b})
  check(a ^ b, binary_ref.pow, {a, b}); check(-b, unary_ref.neg, {b})
  check(2 - b, binary_ref.sub, {2, b}, nil, nil, "2 - t"); check(2 / a, binary_ref.div, {2, a}, nil, nil, "2 / t")
  check(2 ^ b, binary_ref.pow, {2, b}, nil, nil, "2 ^ t"); check(b / 3, binary_ref.div, {b, 3}, nil, nil, "t / 3")
  check(b ^ 2, binary_ref.pow, {b, 2}, nil, nil, "t ^ 2"); check(a ^ 0.5, binary_ref.pow, {a, 0.5}, nil, nil, "t ^ 0.5")
  check(3 * b, binary_ref.mul, {3, b}); check(1 + b, binary_ref.add, {1, b})
  check(a:add(b, 2), function(x, y) return x + 2 * y end, {a, b}, nil, nil, "add alpha")
  check(a:sub(b, 0.5), function(x, y) return x - 0.5 * y end, {a, b}, nil, nil, "sub alpha")
  check(a:add(3, 2), function(x) return x + 6 end, {a}, nil, nil, "add number alpha")
  -- NaN propagates through maximum/minimum
  local n, m = sere.tensor({0 / 0, 1, 2}), sere.tensor({1, 0 / 0, 3})
  local mx, mn = sere.maximum(n, m):totable(), sere.minimum(n, m):totable()
  assert(mx[1] ~= mx[1] and mx[2] ~= mx[2] and mx[3] == 3)
  assert(mn[1] ~= mn[1] and mn[2] ~= mn[2] and mn[3] == 2)
end)

T.test("broadcasting shapes", function()
  local cases = {
    {{3, 1, 4}, {2, 1}}, {{5, 7}, {7}}, {{5, 7}, {5, 1}}, {{1, 6}, {4, 1}}, {{2, 3, 4}, {}},
    {{}, {2, 3}}, {{4}, {3, 1, 4}}, {{2, 1, 3, 1}, {5, 1, 4}}, {{1}, {1, 1}},
  }
  for _, c in ipairs(cases) do
    local a, b = sere.rand(c[1]) + 0.5, sere.randn(c[2])
    for op, f in pairs(binary_ref) do
      local what = op .. " " .. table.concat(c[1], "x") .. " with " .. table.concat(c[2], "x")
      check(a[op](a, b), f, {a, b}, nil, nil, what)
    end
    check(a:lt(b), function(x, y) return x < y end, {a, b}, nil, nil, "lt broadcast")
  end
  T.eq(table.concat((sere.ones(3, 1, 4) + sere.ones(2, 1)):shape(), "x"), "3x2x4")
end)

T.test("non-contiguous operands: transposed, narrowed, expanded", function()
  local base = sere.randn(5, 6)
  local t = base:t()                       -- [6, 5], strides (1, 6)
  local n = base:narrow(2, 2, 4)           -- [5, 4], rows of a wider tensor
  local e = sere.randn(1, 4):expand(5, 4)  -- stride 0 along dim 1
  local c = sere.randn(6, 5)
  for op, f in pairs(binary_ref) do
    local pa = op == "pow" and t:abs() + 0.5 or t
    check(pa[op](pa, c), f, {pa, c}, nil, nil, op .. " transposed")
    check(c[op](c, pa), f, {c, pa}, nil, nil, op .. " transposed second")
    local pn = op == "pow" and n:abs() + 0.5 or n
    check(pn[op](pn, e), f, {pn, e}, nil, nil, op .. " narrowed/expanded")
  end
  check(t:exp(), math.exp, {t}, nil, nil, "exp transposed")
  check(e:sin(), math.sin, {e}, nil, nil, "sin expanded")
  check(n:gt(0), function(x) return x > 0 end, {n}, nil, nil, "gt narrowed")
  check(t:t() + base, binary_ref.add, {base, base}, nil, nil, "transpose back")
  local ne = sere.randn(3, 1):expand(3, 4)
  check(ne + 1, function(x) return x + 1 end, {ne}, nil, nil, "expanded plus number")
end)

T.test("large tensors take the parallel path", function()
  local x = sere.randn(300, 200)
  local row, col = sere.randn(200), sere.randn(300, 1)
  check(x + row, binary_ref.add, {x, row}, nil, nil, "row broadcast")
  check(x * col, binary_ref.mul, {x, col}, nil, nil, "column broadcast")
  check(x - 2, function(v) return v - 2 end, {x}, nil, nil, "scalar")
  check(x:t() / 4, function(v) return v / 4 end, {x:t()}, nil, nil, "transposed")
  check(x:tanh(), unary_ref.tanh, {x}, nil, nil, "tanh")
  check(x:ge(col), function(a, b) return a >= b end, {x, col}, nil, nil, "ge")
  local h = x:to("bf16")
  check(h * row, binary_ref.mul, {h, row}, nil, nil, "bf16 * f32")
  local y = x:clone()
  y:add_(row)
  check(y, binary_ref.add, {x, row}, nil, nil, "add_ large")
  local big = sere.arange(70000)
  check(big * 3 - big, function(v) return 2 * v end, {big}, nil, nil, "i64 large")
end)

T.test("bf16 computes in f32 and rounds to bf16", function()
  local a, b = (sere.rand(4, 5) + 0.5):to("bf16"), sere.randn(4, 5):to("bf16")
  for op, f in pairs(binary_ref) do
    local r = a[op](a, b)
    T.eq(r:dtype(), "bf16", op .. " dtype")
    check(r, f, {a, b}, BF16_ATOL, BF16_RTOL, op .. " bf16")
  end
  for op, f in pairs(unary_ref) do
    local x = input_for(op, {4, 5}):to("bf16")
    local r = x[op](x)
    T.eq(r:dtype(), "bf16", op .. " dtype")
    check(r, f, {x}, BF16_ATOL, BF16_RTOL, op .. " bf16")
  end
  check(a * 3, function(x) return 3 * x end, {a}, BF16_ATOL, BF16_RTOL, "bf16 * number")
  check(a:t() + b:t(), binary_ref.add, {a:t(), b:t()}, BF16_ATOL, BF16_RTOL, "bf16 transposed")
end)

T.test("integer ops are exact", function()
  local big = (1 << 40) + 1
  local a = sere.tensor({big, -7, 3, 0, 123456789})
  local b = sere.tensor({(1 << 41) + 3, 2, -5, 9, 1000})
  T.eq(a:dtype(), "i64")
  for _, op in ipairs({"add", "sub", "mul", "maximum", "minimum"}) do
    local r = a[op](a, b)
    T.eq(r:dtype(), "i64", op)
    check(r, binary_ref[op], {a, b}, nil, nil, op .. " i64")
  end
  check(a * 3 + 1, function(x) return x * 3 + 1 end, {a}, nil, nil, "i64 with numbers")
  check(-a, function(x) return -x end, {a}, nil, nil, "i64 neg")
  check(a:abs(), math.abs, {a}, nil, nil, "i64 abs")
  check(a:square(), function(x) return x * x end, {a}, nil, nil, "i64 square")  -- wraps like Lua integers
  -- wraps around like PyTorch (and like Lua integers)
  T.eq((sere.tensor({math.maxinteger}) + 1)[1], math.mininteger)
  local p = sere.tensor({3, -2, 7, 0}) ^ sere.tensor({30, 3, 0, 5})
  T.eq(p:dtype(), "i64")
  T.eq(p:totable()[1], 205891132094649); T.eq(p:totable()[2], -8); T.eq(p:totable()[3], 1); T.eq(p:totable()[4], 0)
  T.eq((sere.tensor({2, 3}) ^ 2):totable()[2], 9)
  T.eq((2 ^ sere.tensor({10, 62}))[2], 1 << 62)
  local i = sere.tensor({100000, -3, 7}, {dtype = "i32"})
  local j = sere.tensor({20000, 4, -9}, {dtype = "i32"})
  T.eq((i * j):dtype(), "i32")
  check(i * j, function(x, y) return x * y end, {i, j}, nil, nil, "i32 mul")
  check(i - 1, function(x) return x - 1 end, {i}, nil, nil, "i32 sub number")
  local u = sere.tensor({250, 3}, {dtype = "u8"})
  T.eq((u + 10):totable()[1], 4)  -- u8 wraps: 260 mod 256
  T.eq(i:sign():totable()[2], -1); T.eq(i:floor():dtype(), "i32"); T.eq(i:round():totable()[1], 100000)
  T.eq(i:clamp(0, 10):totable()[1], 10); T.eq(i:clamp(0, 10):dtype(), "i32")
end)

T.test("type promotion", function()
  local f32, bf16 = sere.ones(2), sere.ones({2}, {dtype = "bf16"})
  local i64, i32 = sere.ones({2}, {dtype = "i64"}), sere.ones({2}, {dtype = "i32"})
  local u8, b = sere.ones({2}, {dtype = "u8"}), sere.ones({2}, {dtype = "bool"})
  T.eq((i64 + f32):dtype(), "f32"); T.eq((f32 + i64):dtype(), "f32")
  T.eq((i32 / i32):dtype(), "f32"); T.eq((i64 / 2):dtype(), "f32")
  T.eq((i32 + i64):dtype(), "i64"); T.eq((u8 + i32):dtype(), "i32"); T.eq((b + u8):dtype(), "u8")
  T.eq((bf16 + f32):dtype(), "f32"); T.eq((bf16 + i64):dtype(), "bf16")
  T.eq((b + b):dtype(), "bool"); T.eq((b * b):dtype(), "bool")
  -- a 0-dim tensor counts only when it is of a higher category
  T.eq((bf16 * sere.tensor(2.0)):dtype(), "bf16"); T.eq((i32 + sere.tensor(3)):dtype(), "i32")
  T.eq((i32 + sere.tensor(0.5)):dtype(), "f32"); T.eq((sere.tensor(3) + sere.tensor(0.5)):dtype(), "f32")
  -- numbers: float tensors keep their dtype; integer tensors unless the number is fractional
  T.eq((i32 + 2):dtype(), "i32"); T.eq((i32 + 2.0):dtype(), "i32"); T.eq((i32 + 2.5):dtype(), "f32")
  T.eq((bf16 + 2.5):dtype(), "bf16"); T.eq((b + 1):dtype(), "i64"); T.eq((b + 0.5):dtype(), "f32")
  T.eq((u8 * 2):dtype(), "u8"); T.eq((2 - i32):dtype(), "i32"); T.eq((2 / i32):dtype(), "f32")
  T.eq(i64:exp():dtype(), "f32"); T.eq(i32:abs():dtype(), "i32"); T.eq(f32:logical_not():dtype(), "bool")
  check(sere.tensor({1, 3, -3}) / 2, function(x) return x / 2 end, {sere.tensor({1, 3, -3})}, nil, nil, "true division")
  check(sere.tensor({1, 3}) + 0.25, function(x) return x + 0.25 end, {sere.tensor({1, 3})}, nil, nil, "i64 + fraction")
  T.eq(sere.tensor({1, 2, 3}):lt(2.5):totable()[3], false); T.eq(sere.tensor({1, 2, 3}):lt(2.5):totable()[2], true)
  -- i64 comparisons are exact beyond 2^24 (f32 would merge these)
  T.eq(sere.tensor({(1 << 40) + 1}):eq((1 << 40))[1], false)
end)

T.test("unary ops match Lua math", function()
  for op, f in pairs(unary_ref) do
    local x = input_for(op, {3, 5})
    check(x[op](x), f, {x}, nil, nil, op)
    check(sere[op](x:t()), f, {x:t()}, nil, nil, op .. " transposed")
  end
  local i = sere.tensor({-3, 0, 5})
  for _, op in ipairs({"neg", "abs", "sign", "square", "floor", "ceil", "round"}) do
    T.eq(i[op](i):dtype(), "i64", op)
    check(i[op](i), unary_ref[op], {i}, nil, nil, op .. " i64")
  end
  check(i:exp(), math.exp, {i}, nil, nil, "exp of i64")
  check(sere.tensor({true, false}):logical_not(), function(v) return not v end, {sere.tensor({true, false})})
  check(sere.tensor({0.0, 2.5, -1}):logical_not(), function(v) return v == 0 end, {sere.tensor({0.0, 2.5, -1})})
  -- exp (a vectorised polynomial) over its whole range: within 2 ulp, 0
  -- where e^x < 2e-38 (x < -86.9), inf past the largest f32
  local w = sere.linspace(-100, 100, 20000)
  local function exp_ref(v)
    if v < -86.9 then return 0 elseif v > 88.7228 then return math.huge end
    return math.exp(v)
  end
  check(w:exp(), exp_ref, {w}, 0, 2.4e-7, "exp range")
  check(w:sigmoid(), unary_ref.sigmoid, {w}, 1e-37, 2.4e-7, "sigmoid range")
  local special = sere.tensor({0 / 0, math.huge, -math.huge, 0.0}):exp():totable()
  assert(special[1] ~= special[1] and special[2] == math.huge and special[3] == 0 and special[4] == 1)
  -- tanh, log, sin, cos (vectorised, vecmath.h) over wide ranges: within
  -- 1.5 ulp (3 ulp relative tolerance, as the values of w round to f32)
  local function tanh_ref(v)
    if math.abs(v) < 1e-3 then return v - v ^ 3 / 3 + 2 * v ^ 5 / 15 end
    if math.abs(v) > 20 then return v > 0 and 1 or -1 end
    local e = math.exp(2 * v)
    return (e - 1) / (e + 1)
  end
  local small = sere.linspace(-0.7, 0.7, 20001) -- the polynomial branch and its edge at 0.55
  check(small:tanh(), tanh_ref, {small}, 0, 3.6e-7, "tanh near 0")
  check(w:tanh(), tanh_ref, {w}, 0, 3.6e-7, "tanh range")
  local tiny = sere.tensor({1e-30, -1e-30, 1e-40, 3e-8})
  check(tiny:tanh(), tanh_ref, {tiny}, 0, 1.2e-7, "tanh of tiny values")
  local pos = sere.linspace(-30, 30, 20000):exp() -- 1e-13 .. 1e13
  check(pos:log(), math.log, {pos}, 1e-6, 1.8e-7, "log range")
  local edges = sere.tensor({1e-40, 1.0, 2.0 ^ -126}) -- a subnormal, 1, the smallest normal
  check(edges:log(), math.log, {edges}, 0, 1.8e-7, "log edges")
  local angles = sere.linspace(-1e5, 1e5, 20001)
  check(angles:sin(), math.sin, {angles}, 1e-7, 1.2e-7, "sin range")
  check(angles:cos(), math.cos, {angles}, 1e-7, 1.2e-7, "cos range")
  local big = sere.tensor({1e6, -3e7, 1e30, 2.0 ^ 20, 3.1415927})
  check(big:sin(), math.sin, {big}, 1e-7, 1.2e-7, "sin of large angles")
  check(big:cos(), math.cos, {big}, 1e-7, 1.2e-7, "cos of large angles")
  local in_place = big:clone()
  in_place:sin_() -- reads the large angles again after the vectorised pass
  T.eq(in_place, big:sin(), "sin_ of large angles")
  -- erf: its Taylor series in double (1e-10 absolute below 4; beyond, erf
  -- is 1 to f32 precision), within 2 ulp
  local function erf_ref(v)
    if math.abs(v) >= 4 then return v > 0 and 1 or -1 end
    local term, sum, k = v, v, 0
    repeat
      k = k + 1
      term = -term * v * v / k
      sum = sum + term / (2 * k + 1)
    until math.abs(term) <= 1e-17 * math.abs(sum)
    return 2 / math.sqrt(math.pi) * sum
  end
  local e = sere.linspace(-5, 5, 20001)
  check(e:erf(), erf_ref, {e}, 1e-30, 2.4e-7, "erf range")
  check(tiny:erf(), erf_ref, {tiny}, 1e-44, 2.4e-7, "erf of tiny values")
  local nan, inf = 0 / 0, math.huge
  local s = sere.tensor({nan, inf, -inf, 0.0, -0.0, -1.0})
  local th, lg, sn, cs = s:tanh():totable(), s:log():totable(), s:sin():totable(), s:cos():totable()
  assert(th[1] ~= th[1] and th[2] == 1 and th[3] == -1 and th[4] == 0 and 1 / th[5] == -inf, "tanh specials")
  assert(lg[1] ~= lg[1] and lg[2] == inf and lg[3] ~= lg[3] and lg[4] == -inf and lg[5] == -inf and lg[6] ~= lg[6],
         "log specials")
  assert(sn[1] ~= sn[1] and sn[2] ~= sn[2] and sn[3] ~= sn[3] and 1 / sn[5] == -inf and cs[4] == 1, "sin/cos specials")
  -- half to even, like torch.round
  local r = sere.tensor({0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6, -2.6}):round():totable()
  local want = {0, 2, 2, 0, -2, 2, 3, -3}
  for k = 1, #want do T.eq(r[k], want[k], "round " .. k) end
  T.eq(sere.tensor({-1.5, 1.5}):floor():totable()[1], -2.0); T.eq(sere.tensor({-1.5, 1.5}):ceil():totable()[2], 2.0)
  T.eq(sere.tensor({-2.0, 0.0, 3.0}):sign():totable()[1], -1.0)
end)

T.test("comparisons give bool tensors", function()
  local a, b = sere.randn(4, 3), sere.randn(3)
  b = b:masked_fill(sere.tensor({true, false, false}), 0)
  a[1][1] = 0
  local refs = {eq = function(x, y) return x == y end, ne = function(x, y) return x ~= y end,
                lt = function(x, y) return x < y end, le = function(x, y) return x <= y end,
                gt = function(x, y) return x > y end, ge = function(x, y) return x >= y end}
  for op, f in pairs(refs) do
    local r = a[op](a, b)
    T.eq(r:dtype(), "bool", op)
    check(r, f, {a, b}, nil, nil, op)
    check(sere[op](a, 0.25), f, {a, 0.25}, nil, nil, op .. " number")
    check(sere[op](0.25, a), f, {0.25, a}, nil, nil, "number " .. op)
  end
  check(sere.tensor({1, 5, 3}):ge(sere.tensor({2.5})), function(x, y) return x >= y end,
        {sere.tensor({1, 5, 3}), sere.tensor({2.5})}, nil, nil, "i64 vs f32")
end)

T.test("logical ops", function()
  local p = sere.tensor({true, true, false, false})
  local q = sere.tensor({true, false, true, false})
  check(p:logical_and(q), function(x, y) return x and y end, {p, q})
  check(p:logical_or(q), function(x, y) return x or y end, {p, q})
  check(p:logical_xor(q), function(x, y) return x ~= y end, {p, q})
  check(sere.logical_and(p, true), function(x) return x end, {p}, nil, nil, "and true")
  local n = sere.tensor({0.0, 2.0, -1.0, 0.0})
  check(n:logical_or(p), function(x, y) return x ~= 0 or y end, {n, p}, nil, nil, "float operand")
  check(p:reshape(4, 1):logical_xor(q), function(x, y) return x ~= y end, {p:reshape(4, 1), q}, nil, nil, "broadcast")
end)

T.test("clamp", function()
  local x = sere.randn(4, 5)
  check(x:clamp(-0.5, 0.5), function(v) return math.min(math.max(v, -0.5), 0.5) end, {x}, nil, nil, "clamp")
  check(x:clamp(nil, 0.2), function(v) return math.min(v, 0.2) end, {x}, nil, nil, "clamp max only")
  check(sere.clamp(x, 0), function(v) return math.max(v, 0) end, {x}, nil, nil, "clamp min only")
  check(x:clamp(1, -1), function() return -1 end, {x}, nil, nil, "min > max gives max")
  local i = sere.tensor({-5, 0, 7})
  T.eq(i:clamp(-1, 1):dtype(), "i64"); T.eq(i:clamp(-1, 1):totable()[1], -1)
  T.eq(i:clamp(-0.5):dtype(), "f32"); T.eq(i:clamp(-0.5):totable()[1], -0.5)
  local nan = sere.tensor({0 / 0}):clamp(0, 1)[1]
  assert(nan ~= nan, "clamp keeps NaN")
  T.raises(function() x:clamp() end, "at least one of min and max")
  T.raises(function() x:clamp("a") end, "bounds must be numbers")
end)

T.test("where and masked_fill", function()
  local c = sere.randn(3, 4):gt(0)
  local a, b = sere.randn(3, 4), sere.randn(4)
  local pick = function(k, x, y) if k then return x end return y end
  check(sere.where(c, a, b), pick, {c, a, b}, nil, nil, "where")
  check(a:where(c, b), pick, {c, a, b}, nil, nil, "a:where")
  check(sere.where(c, a, 0), function(k, x) return k and x or 0 end, {c, a}, nil, nil, "where number")
  check(sere.where(c, 1, 0), function(k) return k and 1 or 0 end, {c}, nil, nil, "where numbers")
  T.eq(sere.where(c, 1, 0):dtype(), "i64"); T.eq(sere.where(c, 1.5, 0):dtype(), "f32")
  T.eq(sere.where(c, a:to("bf16"), 0.5):dtype(), "bf16")
  local col = sere.tensor({{true}, {false}, {true}})
  check(sere.where(col, a, b), pick, {col, a, b}, nil, nil, "where broadcast cond")
  local m = sere.tensor({true, false, false, true})
  check(a:masked_fill(m, -1), function(x, k) return k and -1 or x end, {a, m}, nil, nil, "masked_fill")
  local i = sere.tensor({{1, 2}, {3, 4}})
  T.eq(i:masked_fill(sere.tensor({{false, true}, {true, false}}), 9):totable()[1][2], 9)
  T.eq(i:masked_fill(sere.tensor({false, true}), 9):dtype(), "i64")
  T.raises(function() sere.where(a, a, b) end, "condition must be a bool tensor, got f32")
  T.raises(function() a:masked_fill(sere.tensor({1, 0, 0, 1}), 0) end, "mask must be a bool tensor, got i64")
  T.raises(function() b:masked_fill(c, 0) end, "does not broadcast to shape %[4%]")
  T.raises(function() sere.where(c, a, sere.randn(5)) end, "do not broadcast")
end)

T.test("in-place ops: values, the tensor itself returned, version bumps", function()
  local x0 = sere.randn(3, 4)
  local row = sere.randn(4)
  local function fresh() return x0:clone() end
  local x = fresh()
  T.eq(rawequal(x:add_(row), x), true)
  check(x, binary_ref.add, {x0, row}, nil, nil, "add_")
  check(fresh():add_(row, 2), function(a, b) return a + 2 * b end, {x0, row}, nil, nil, "add_ alpha")
  check(fresh():sub_(1.5), function(a) return a - 1.5 end, {x0}, nil, nil, "sub_ number")
  check(fresh():mul_(row), binary_ref.mul, {x0, row}, nil, nil, "mul_")
  check(fresh():div_(row), binary_ref.div, {x0, row}, nil, nil, "div_")
  check(fresh():abs():pow_(2), function(a) return a * a end, {x0}, nil, nil, "pow_")
  check(fresh():clamp_(-0.1, 0.1), function(a) return math.min(math.max(a, -0.1), 0.1) end, {x0}, nil, nil, "clamp_")
  check(fresh():exp_(), math.exp, {x0}, nil, nil, "exp_")
  check(fresh():neg_(), unary_ref.neg, {x0}, nil, nil, "neg_")
  check(fresh():tanh_(), unary_ref.tanh, {x0}, nil, nil, "tanh_")
  check(fresh():maximum_(row), math.max, {x0, row}, nil, nil, "maximum_")
  local m = sere.tensor({true, false, true, false})
  check(fresh():masked_fill_(m, 7), function(a, k) return k and 7 or a end, {x0, m}, nil, nil, "masked_fill_")
  check(fresh():fill_(2.5), function() return 2.5 end, {x0}, nil, nil, "fill_")
  check(fresh():zero_(), function() return 0 end, {x0}, nil, nil, "zero_")
  -- into a non-contiguous view: writes through to the base tensor
  local base = fresh()
  base:t():mul_(2)
  check(base, function(a) return 2 * a end, {x0}, nil, nil, "mul_ through a transposed view")
  local nb = fresh()
  nb:narrow(2, 2, 2):fill_(0)
  T.eq(nb[2][2], 0.0); T.eq(nb[2][1], x0[2][1])
  -- an operand overlapping the destination in another layout is read before any write
  local sq = sere.randn(3, 3)
  local s2 = sq:clone()
  s2:add_(s2:t())
  check(s2, binary_ref.add, {sq, sq:t()}, nil, nil, "add_ of own transpose")
  -- integer and bf16 destinations
  local i = sere.tensor({1, 2, 3}, {dtype = "i32"})
  i:add_(sere.tensor({10, 20, 30})); i:mul_(2)
  T.eq(i:dtype(), "i32"); T.eq(i:totable()[3], 66)
  local h = sere.ones({3}, {dtype = "bf16"})
  h:add_(sere.tensor({0.5, 1.5, 2.5}))
  T.eq(h:dtype(), "bf16"); T.eq(h[3], 3.5)
  -- the version counter: autograd notices a saved tensor changed in place
  local v = rnd({3})
  local y = v * v
  sere.no_grad(function() v:add_(1) end)
  T.raises(function() y:backward(sere.ones(3)) end, "modified in place")
  local w = rnd({3})
  local z = w:exp()
  sere.no_grad(function() z:mul_(2) end)
  T.raises(function() z:backward(sere.ones(3)) end, "modified in place")
end)

T.test("error messages", function()
  T.raises(function() return sere.ones(2, 3) + sere.ones(4) end, "add: shapes %[2, 3%] and %[4%] do not broadcast")
  T.raises(function() return sere.ones(2, 3):lt(sere.ones(2)) end, "lt: shapes")
  T.raises(function() return sere.ones(2) + "a" end, "expected a tensor or a number, got string")
  T.raises(function() return sere.add(1, 2) end, "expected a tensor operand")
  local x = rnd({3})
  T.raises(function() x:add_(1) end, "add_: in%-place write to a tensor that requires grad")
  T.raises(function() x:exp_() end, "exp_: in%-place")
  T.raises(function() x:masked_fill_(sere.tensor({true, false, true}), 0) end, "in%-place")
  T.raises(function() sere.ones(3):add_(x) end, "operand requires grad")
  T.raises(function() sere.tensor({1, 2}):div_(2) end,
           "div_: the result has dtype f32, which cannot be written in place into a i64 tensor")
  T.raises(function() sere.tensor({1, 2}):mul_(0.5) end, "cannot be written in place")
  T.raises(function() sere.tensor({1, 2}):exp_() end, "exp_: the result has dtype f32")
  T.raises(function() sere.zeros(3):add_(sere.ones(2, 3)) end,
           "operand of shape %[2, 3%] does not broadcast to shape %[3%]")
  T.raises(function() sere.ones(1, 3):expand(2, 3):add_(1) end, "expanded tensor")
  T.raises(function() return sere.tensor({2, 3}) ^ -1 end, "negative integer power")
  T.raises(function() return -sere.tensor({true}) end, "neg: negating a bool tensor")
  T.raises(function() return sere.tensor({true}) - sere.tensor({false}) end, "sub: subtracting bool tensors")
  T.raises(function() sere.ones(2):fill_("x") end, "fill_: the value must be a number")
  T.raises(function() sere.tensor({true}):clamp(0, 1) end, "clamp: not supported for bool")
end)

-- ---- gradients --------------------------------------------------------------
T.test("gradcheck: binary ops, broadcasting, non-contiguous inputs, numbers", function()
  for _, op in ipairs({"add", "sub", "mul", "div", "maximum", "minimum"}) do
    local f = function(a, b) return a[op](a, b) end
    -- Denominators stay in [0.5, 2), away from the pole at 0. maximum and
    -- minimum take operands on two grids 1/8 apart (and 0.7 is on neither),
    -- so no pair is within the finite-difference step of a tie.
    local num, den = rnd, rnd
    if op == "div" then den = function(s) return rnd_in(s, 0.5, 2) end end
    if op == "maximum" or op == "minimum" then
      num, den = function(s) return rnd_grid(s, 0) end, function(s) return rnd_grid(s, 0.125) end
    end
    gradcheck(f, {num({3, 4}), den({3, 4})})
    gradcheck(f, {num({3, 1, 4}), den({2, 1})})
    gradcheck(f, {num({4}), den({3, 1})})
    gradcheck(function(a, b) return a:t()[op](a:t(), b) end, {num({4, 3}), den({3, 4})})
    gradcheck(function(a, b) return b[op](b, a:t()) end, {den({4, 3}), num({3, 4})})
    gradcheck(function(a, b) local n = a:narrow(2, 2, 3); return n[op](n, b) end, {num({2, 5}), den({1, 3})})
    gradcheck(function(a, b) local e = a:expand(3, 4); return e[op](e, b) end, {num({1, 4}), den({3, 4})})
    gradcheck(function(a) return a[op](a, 0.7) end, {num({5})})
    gradcheck(function(a) return sere[op](0.7, a) end, {den({5})})
  end
  -- div and pow with inputs kept in their domains
  gradcheck(function(a, b) return a / b end, {rnd({3, 4}), rnd_in({4}, 0.5, 2)})
  gradcheck(function(a, b) return a ^ b end, {rnd_in({3, 4}, 0.5, 2), rnd({3, 4})})
  gradcheck(function(a, b) return a ^ b end, {rnd_in({2, 1, 3}, 0.5, 2), rnd({4, 1})})
  gradcheck(function(a, b) return a:t() ^ b end, {rnd_in({4, 3}, 0.5, 2), rnd({4})})
  gradcheck(function(a) return a ^ 2 end, {rnd({6})})
  gradcheck(function(a) return a ^ 3.5 end, {rnd_in({6}, 0.5, 2)})
  gradcheck(function(a) return 2 ^ a end, {rnd({6})})
  gradcheck(function(a) return 2 / a end, {rnd_in({6}, 0.5, 2)})
  gradcheck(function(a) return 2 - a end, {rnd({6})})
  gradcheck(function(a, b) return a:add(b, -1.5) end, {rnd({2, 3}), rnd({3})})
  gradcheck(function(a) return -a end, {rnd({2, 3})})
  -- a 0-dim tensor operand gets a 0-dim gradient
  gradcheck(function(a, s) return a * s end, {rnd({3, 2}), rnd({})})
  -- an input used twice accumulates (one contribution non-contiguous)
  gradcheck(function(a) return a * 2 + a:t() end, {rnd({3, 3})})
end)

T.test("gradcheck: unary ops", function()
  for op in pairs(unary_ref) do
    if not ({sign = true, floor = true, ceil = true, round = true})[op] then
      local make = positive[op] and function(s) return rnd_in(s, 0.3, 2) end or op == "abs" and rnd_nonzero or rnd
      gradcheck(function(a) return a[op](a) end, {make({3, 4})})
      gradcheck(function(a) return sere[op](a:t()) end, {make({4, 3})})
    end
  end
end)

T.test("gradcheck: clamp, where, masked_fill", function()
  -- keep inputs away from the clamp bounds, where the gradient jumps
  local x = sere.randn(4, 5)
  x = x + sere.where(x:abs():lt(0.6):logical_and(x:abs():gt(0.4)), 0.3, 0)
  x.requires_grad = true
  gradcheck(function(a) return a:clamp(-0.5, 0.5) end, {x})
  gradcheck(function(a) return a:clamp(nil, 0.5) end, {x})
  gradcheck(function(a) return a:clamp(-0.5) end, {x})
  local c = sere.randn(3, 4):gt(0)
  gradcheck(function(a, b) return sere.where(c, a, b) end, {rnd({3, 4}), rnd({4})})
  gradcheck(function(a, b) return sere.where(c, a:t(), b) end, {rnd({4, 3}), rnd({3, 1})})
  gradcheck(function(a) return a:where(c, 0) end, {rnd({3, 4})})
  gradcheck(function(a) return sere.where(c, 1.5, a) end, {rnd({1, 4})})
  local m = sere.tensor({true, false, false, true})
  gradcheck(function(a) return a:masked_fill(m, 3) end, {rnd({3, 4})})
  gradcheck(function(a) return a:t():masked_fill(m, 3) end, {rnd({4, 3})})
end)

T.test("gradients: ties, zero-gradient ops, dtypes", function()
  -- maximum/minimum split the gradient half and half on ties, like PyTorch
  local a = sere.tensor({1.0, 2.0, 3.0}); a.requires_grad = true
  local b = sere.tensor({1.0, 5.0, 0.0}); b.requires_grad = true
  sere.maximum(a, b):backward(sere.ones(3))
  T.eq(a.grad, sere.tensor({0.5, 0.0, 1.0})); T.eq(b.grad, sere.tensor({0.5, 1.0, 0.0}))
  a.grad, b.grad = nil, nil
  sere.minimum(a, b):backward(sere.tensor({2.0, 2.0, 2.0}))
  T.eq(a.grad, sere.tensor({1.0, 2.0, 0.0})); T.eq(b.grad, sere.tensor({1.0, 0.0, 2.0}))
  -- abs: gradient sign(x), 0 at 0; clamp passes the gradient at the bounds
  local z = sere.tensor({-2.0, 0.0, 3.0}); z.requires_grad = true
  z:abs():backward(sere.ones(3))
  T.eq(z.grad, sere.tensor({-1.0, 0.0, 1.0}))
  z.grad = nil
  z:clamp(-2, 0):backward(sere.ones(3))
  T.eq(z.grad, sere.tensor({1.0, 1.0, 0.0}))
  for _, op in ipairs({"sign", "floor", "ceil", "round"}) do
    local x = rnd({4})
    local y = x[op](x)
    T.eq(y.requires_grad, true, op)
    y:backward(sere.ones(4))
    T.eq(x.grad, sere.zeros(4), op .. " gradient")
  end
  -- pow: d/db of 0^b is taken as 0 (PyTorch), and d/da at b = 0 is 0
  local base = sere.tensor({0.0, 2.0}); base.requires_grad = true
  local ex = sere.tensor({2.0, 0.0}); ex.requires_grad = true
  local pw = base ^ ex
  pw:backward(sere.ones(2))
  T.eq(base.grad, sere.tensor({0.0, 0.0})); T.close(ex.grad, {0.0, math.log(2)}, 1e-6, 1e-6)
  -- a bf16 leaf gets a bf16 gradient, also through a promotion to f32
  local h = sere.randn(3):to("bf16"); h.requires_grad = true
  local f = sere.randn(3); f.requires_grad = true
  local out = h * f + h:exp()
  T.eq(out:dtype(), "f32")
  out:backward(sere.ones(3))
  T.eq(h.grad:dtype(), "bf16")
  local hv, fv = h:float():totable(), f:totable()
  for k = 1, 3 do T.close(h.grad:float()[k], fv[k] + math.exp(hv[k]), 0.05, 0.02, "bf16 grad") end
  -- comparisons and logical results do not require grad
  T.eq(rnd({2}):gt(0).requires_grad, false)
  -- integer inputs never get gradients, but a float operand does
  local q = rnd({3})
  local r = q * sere.tensor({1, 2, 3})
  r:backward(sere.ones(3))
  T.eq(q.grad, sere.tensor({1.0, 2.0, 3.0}))
end)

T.test("gradient accumulation and axpy-style updates", function()
  -- the engine accumulates contributions of a tensor used many times
  local x = rnd({200, 200})
  local y = x * 2 + x * 3 + x:t()
  y:backward(sere.ones(200, 200))
  check(x.grad, function() return 6 end, {x}, nil, nil, "accumulated gradient")
  -- an optimizer step in no_grad: p = p - lr * grad
  local p = x:detach():clone()
  local before = p:clone()
  sere.no_grad(function() p:sub_(x.grad, 0.1) end)
  check(p, function(a) return a - 0.6 end, {before}, nil, nil, "sub_ with alpha")
end)

T.finish()
