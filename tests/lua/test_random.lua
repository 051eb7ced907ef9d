-- test_random.lua — the random fills follow the stream layout documented in
-- host/ops/random.c, checked against Philox4x32-10 written here in Lua:
-- uniform and randint values exactly, normal values (Box-Muller, computed in
-- f32 by sere) within 4 ulp of the same formula in double, across batch
-- boundaries, odd tails, strided and bf16 targets.
local sere = require "sere"
local T = dofile("tests/lua/harness.lua")

-- Philox4x32-10 on counter (block, 0) under key `seed`: the four words.
local MASK = 0xffffffff
local function philox(seed, block)
  local c0, c1, c2, c3 = block & MASK, (block >> 32) & MASK, 0, 0
  local k0, k1 = seed & MASK, (seed >> 32) & MASK
  for _ = 1, 10 do
    local p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2 -- wraps modulo 2^64; >> is logical
    c0, c1, c2, c3 = (p1 >> 32) ~ c1 ~ k0, p1 & MASK, (p0 >> 32) ~ c3 ~ k1, p0 & MASK
    k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
  end
  return {c0, c1, c2, c3}
end

-- Element i (0-based) of a fill starting at block `offset`: the word and its block.
local function word(seed, offset, i)
  local w = philox(seed, offset + i // 4)
  return w[i % 4 + 1], w
end

local function uniform_ref(seed, offset, i) return (word(seed, offset, i) >> 8) * 2.0 ^ -24 end

local function normal_ref(seed, offset, i)
  local _, w = word(seed, offset, i)
  local pair = i % 4 < 2 and 1 or 3
  local u1, u2 = ((w[pair] >> 8) + 1) * 2.0 ^ -24, (w[pair + 1] >> 8) * 2.0 ^ -24
  local r = math.sqrt(-2 * math.log(u1))
  return i % 2 == 0 and r * math.cos(2 * math.pi * u2) or r * math.sin(2 * math.pi * u2)
end

local ULP4 = 4 * 2.0 ^ -23 -- 4 ulp of f32, relative: the documented precision of normal values

-- Indices worth checking in a fill of n: both ends, batch edges (1024 values), a spread.
local function probes(n)
  local out = {}
  for _, i in ipairs({0, 1, 2, 3, 4, 1023, 1024, 1025, 2047, 2048, n // 2, n - 5, n - 1}) do
    if i >= 0 and i < n then out[#out + 1] = i end
  end
  for k = 1, 40 do out[#out + 1] = (k * 7919) % n end
  return out
end

T.test("Philox in Lua reproduces the published known answer", function()
  local w = philox(0, 0)
  T.eq(w[1], 0x6627e8d5); T.eq(w[2], 0xe169c58d); T.eq(w[3], 0xbc57ac4c); T.eq(w[4], 0x9b00dbd8)
end)

T.test("uniform values follow the stream exactly", function()
  local g = sere.Generator(1234)
  g.offset = 77
  local n = 3 * 1024 + 5 -- several batches and a partial block
  local t = sere.rand({n}, {generator = g}):totable()
  T.eq(g.offset, 77 + (n + 3) // 4)
  for _, i in ipairs(probes(n)) do T.eq(t[i + 1], uniform_ref(1234, 77, i), "rand element " .. i) end
  -- uniform_ scales in double and rounds once
  local s = sere.zeros(9):uniform_(-2, 3, {generator = sere.Generator(5)}):totable()
  for i = 0, 8 do
    local want = sere.tensor({-2 + 5 * uniform_ref(5, 0, i)}):totable()[1] -- rounded to f32
    T.eq(s[i + 1], want, "uniform_ element " .. i)
  end
end)

T.test("normal values are Box-Muller on the stream within 4 ulp", function()
  local seed, n = 0x123456789, 5 * 1024 + 3
  local g = sere.Generator(seed)
  g.offset = 3
  local t = sere.randn({n}, {generator = g}):totable()
  T.eq(g.offset, 3 + (n + 3) // 4)
  for _, i in ipairs(probes(n)) do
    local want = normal_ref(seed, 3, i)
    T.close(t[i + 1], want, 1e-30, ULP4, "randn element " .. i)
  end
  -- mean and std: one more rounding
  local m = sere.zeros(7):normal_(2, 3, {generator = sere.Generator(9)}):totable()
  for i = 0, 6 do T.close(m[i + 1], 2 + 3 * normal_ref(9, 0, i), 1e-6, 1e-6, "normal_ element " .. i) end
end)

T.test("normal values cover their extremes and have mean 0, std 1", function()
  local x = sere.randn({1 << 20}, {generator = sere.Generator(42)})
  T.close(x:mean():item(), 0, 5e-3, 0, "mean")
  T.close(x:std():item(), 1, 5e-3, 0, "std")
  -- u1 = 2^-24 gives the largest |z|: sqrt(2 * 24 ln 2) = 5.77
  assert(x:abs():max():item() < 5.78)
end)

T.test("randint values follow the stream exactly", function()
  local g = sere.Generator(77)
  local n = 1024 + 9
  local t = sere.randint(-5, 7, {n}, {generator = g}):totable()
  for _, i in ipairs(probes(n)) do
    -- lo + floor(word * range / 2^32) (1-based bindings pass the bounds as given)
    T.eq(t[i + 1], -5 + ((word(77, 0, i) * 12) >> 32), "randint element " .. i)
  end
end)

T.test("strided and bf16 targets take the values in row-major order", function()
  local a = sere.zeros(3, 5):t() -- [5, 3], transposed strides
  a:uniform_(0, 1, {generator = sere.Generator(8)})
  T.eq(a, sere.rand({5, 3}, {generator = sere.Generator(8)}))
  local b = sere.randn({6, 7}, {dtype = "bf16", generator = sere.Generator(8)})
  T.eq(b, sere.randn({6, 7}, {generator = sere.Generator(8)}):to("bf16"))
  local c = sere.zeros(4, 6):narrow(2, 2, 3)
  c:normal_(0, 1, {generator = sere.Generator(3)})
  T.eq(c, sere.randn({4, 3}, {generator = sere.Generator(3)}))
end)

T.finish()
