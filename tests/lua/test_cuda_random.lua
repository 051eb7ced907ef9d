-- test_cuda_random.lua — the CUDA random fills (kernels/random.cu) against
-- the CPU's for the same generator state: uniform_ bit for bit, normal_
-- bit for bit in the emulator and within two ulps of the largest value on
-- a GPU (the kernel repeats the CPU's f32 Box-Muller operation for
-- operation, see random.cu; we measured it exact), randint exactly; odd
-- sizes, bf16, strided targets, generators advanced by odd amounts (and
-- past 2^32 blocks, the counter's high word), the offset advancing alike
-- on both devices, and the default generator; sere.rand/randn/randint
-- with {device = "cuda"} fill on the device (more randint dtypes and a
-- strided target: tests/c/test_cuda_random.c).
-- Without a device every case is reported as skipped.
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

if not P.available then
  T.skip("cuda random fills", P.reason)
  T.finish()
end

local launches = P.launches

-- Two generators in the same state.
local function twins(seed, offset)
  local a, b = sere.Generator(seed), sere.Generator(seed)
  a.offset, b.offset = offset, offset
  return a, b
end

-- max |got - ref| / max |ref| and the number of elements that differ.
local function compare(got, ref)
  local g, r = got:cpu():float():reshape(-1):totable(), ref:float():reshape(-1):totable()
  local scale, worst, differ = 1e-30, 0, 0
  for i = 1, #r do scale = math.max(scale, math.abs(r[i])) end
  for i = 1, #r do
    if g[i] ~= r[i] then
      differ = differ + 1
      worst = math.max(worst, math.abs(g[i] - r[i]))
    end
  end
  return worst / scale, differ
end

-- Fills a CPU and a CUDA tensor of `shape` (through `view` when given)
-- from twin generators; checks the launch, the offsets, and returns both.
local function fill_both(shape, dtype, seed, offset, fill, view)
  local ga, gb = twins(seed, offset)
  local c, g = sere.empty(shape, {dtype = dtype}), sere.empty(shape, {dtype = dtype, device = "cuda"})
  fill(view and view(c) or c, ga)
  local before = launches()
  fill(view and view(g) or g, gb)
  if sere.cuda.emulated() and launches() == before then error("no kernel was launched", 2) end
  T.eq(gb.offset, ga.offset, "generator offset after the fill")
  return g, c
end

local sizes = {{1}, {7}, {33}, {197}, {3, 5, 7}, {4099}}
local states = {{0, 0}, {20261126, 1}, {7, 12345}, {99, 4294967295}, {123456789, 4294967299}}

for _, dtype in ipairs({"f32", "bf16"}) do
  for i, shape in ipairs(sizes) do
    local seed, offset = table.unpack(states[(i - 1) % #states + 1])
    local lo, hi = ({0, -2.5, 1e-3})[i % 3 + 1], ({1, 7.25, 3})[i % 3 + 1]
    T.test(string.format("uniform_(%g, %g) %s [%s] from (seed %d, offset %d) is bit-identical", lo, hi, dtype,
                         table.concat(shape, ", "), seed, offset), function()
      local g, c = fill_both(shape, dtype, seed, offset, function(t, gen) t:uniform_(lo, hi, {generator = gen}) end)
      local err, differ = compare(g, c)
      T.eq(differ, 0, string.format("elements that differ (worst normalised error %.3g)", err))
    end)
  end
end

local normal_bound = 2 ^ -22 -- two ulps of the largest value (the emulator must be exact)
for _, dtype in ipairs({"f32", "bf16"}) do
  for i, shape in ipairs(sizes) do
    local seed, offset = table.unpack(states[i % #states + 1])
    local mean, std = ({0, 3, -1})[i % 3 + 1], ({1, 0.5, 2.7})[i % 3 + 1]
    T.test(string.format("normal_(%g, %g) %s [%s] from (seed %d, offset %d) matches", mean, std, dtype,
                         table.concat(shape, ", "), seed, offset), function()
      local g, c = fill_both(shape, dtype, seed, offset, function(t, gen) t:normal_(mean, std, {generator = gen}) end)
      local err, differ = compare(g, c)
      if sere.cuda.emulated() then T.eq(differ, 0, string.format("elements that differ (normalised %.3g)", err))
      elseif err > normal_bound then error(string.format("normalised error %.3g > %.3g", err, normal_bound)) end
    end)
  end
end

T.test("a large normal_ fill (2^18 + 3 values) matches", function()
  local g, c = fill_both({2 ^ 18 + 3}, "f32", 5, 77, function(t, gen) t:normal_(0, 1, {generator = gen}) end)
  local err, differ = compare(g, c)
  if sere.cuda.emulated() then T.eq(differ, 0, "elements that differ")
  else T.eq(err <= normal_bound, true, string.format("normalised error %.3g", err)) end
end)

T.test("strided targets fill in the view's row-major order", function()
  local t = function(x) return x:t() end
  local g, c = fill_both({9, 5}, "f32", 3, 11, function(x, gen) x:uniform_(0, 1, {generator = gen}) end, t)
  T.eq(select(2, compare(g, c)), 0, "uniform_ through a transpose")
  g, c = fill_both({6, 10}, "f32", 4, 3, function(x, gen) x:normal_(0, 1, {generator = gen}) end,
                   function(x) return x:narrow(2, 2, 7) end)
  T.eq(select(2, compare(g, c)), 0, "normal_ into a narrowed view")
  T.eq(c:narrow(2, 1, 1):abs():sum():item(), 0, "outside the view untouched (cpu)")
  T.eq(g:narrow(2, 1, 1):abs():sum():item(), 0, "outside the view untouched (cuda)")
end)

T.test("odd advances interleave: cuda and cpu fills share one stream", function()
  local shared, ref = sere.Generator(31), sere.Generator(31)
  local got, want = {}, {}
  for k, n in ipairs({5, 1, 7, 33, 2}) do
    local dev = k % 2 == 1 and "cuda" or "cpu"
    got[k] = sere.empty({n}, {device = dev}):uniform_(0, 1, {generator = shared}):cpu()
    want[k] = sere.empty({n}):uniform_(0, 1, {generator = ref})
  end
  T.eq(shared.offset, ref.offset, "offset")
  for k = 1, #got do T.eq(select(2, compare(got[k], want[k])), 0, "fill " .. k) end
end)

T.test("the default generator: cuda after manual_seed repeats the cpu numbers", function()
  sere.manual_seed(2024)
  local c = sere.empty({3, 11}):normal_()
  local cu = sere.empty({3, 11}):uniform_()
  sere.manual_seed(2024)
  local g = sere.empty({3, 11}, {device = "cuda"}):normal_()
  local gu = sere.empty({3, 11}, {device = "cuda"}):uniform_()
  T.eq(select(2, compare(g, c)), 0, "normal_")
  T.eq(select(2, compare(gu, cu)), 0, "uniform_")
end)

T.test("randint on cuda equals the cpu's, i64 and i32", function()
  for _, dt in ipairs({"i64", "i32"}) do
    local ga, gb = twins(8, 13)
    local c = sere.randint(-5, 1000003, {7, 33}, {generator = ga, dtype = dt})
    local g = sere.randint(-5, 1000003, {7, 33}, {generator = gb, dtype = dt, device = "cuda"})
    T.eq(g:device(), "cuda")
    T.eq(gb.offset, ga.offset)
    T.eq(g:cpu():ne(c):sum():item(), 0, dt)
  end
end)

T.test("random fills refuse integer tensors on cuda as on cpu", function()
  T.raises(function() sere.zeros({3}, {dtype = "i64", device = "cuda"}):uniform_() end, "uniform_: needs a float tensor")
  T.raises(function() sere.zeros({3}, {device = "cuda"}):normal_(0, -1) end, "normal_: std must be >= 0")
end)

T.finish()
