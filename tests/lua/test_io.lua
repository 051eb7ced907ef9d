-- test_io.lua — safetensors files: round trips of every dtype (views,
-- 0-dim and empty tensors, metadata), the fixtures written by the Python
-- safetensors library (tests/reference/make_io_fixtures.py), a long list of
-- corrupted files that must each raise an error naming the file and the
-- problem, and atomic writes (failures leave nothing behind).
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local sio = sere.io

local base = os.tmpname() -- an empty file made by mkstemp; our files are named after it
local made = {}
local function tmp(name)
  local p = base .. "_" .. name .. ".safetensors"
  made[#made + 1] = p
  return p
end
local write = T.write_file
local read = T.read_file
local exists = sere.io.exists
local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end
-- Rounds a Lua number to the nearest f32, independently of sere.
local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end

local function roundtrip(name, tensors, meta)
  local p = tmp(name)
  sio.save(p, tensors, meta)
  return sio.load(p)
end

-- Exact comparison of a loaded tensor with the saved one (same dtype, shape, values).
local function same(got, want, what)
  T.eq(got:dtype(), want:dtype(), what .. " dtype")
  T.eq(table.concat(got:shape(), "x"), table.concat(want:shape(), "x"), what .. " shape")
  T.eq(got:is_contiguous(), true, what .. " contiguous")
  if want:numel() > 0 then sere.testing.assert_close(got, want, 0, 0, what) end
end

T.test("round trip of every dtype", function()
  local g = sere.Generator(7)
  local ts = {
    f32 = sere.randn({3, 4}, {generator = g}),
    bf16 = sere.randn({5}, {generator = g}):to("bf16"),
    i32 = sere.tensor({{7, -8}, {2147483647, -2147483648}}, {dtype = "i32"}),
    i64 = sere.tensor({1, -2, math.maxinteger, math.mininteger, 4611686018427387905}),
    u8 = sere.tensor({0, 1, 127, 128, 255}, {dtype = "u8"}),
    bool = sere.tensor({{true, false, true}}),
  }
  local got = roundtrip("dtypes", ts)
  T.eq(count(got), 6, "tensor count")
  for k, v in pairs(ts) do same(got[k], v, k) end
  -- integers beyond 2^53 survive exactly
  T.eq(got.i64[5], 4611686018427387905)
  T.eq(got.i64[4], math.mininteger)
end)

T.test("non-contiguous tensors are written contiguous with their values", function()
  local x = sere.randn(4, 6)
  local ts = {
    transposed = x:t(),
    narrowed = x:narrow(2, 2, 3),
    selected = x:select(2, 5),
    expanded = sere.tensor({{1}, {2}, {3}}, {dtype = "i32"}):expand(3, 4),
    permuted = sere.arange(24):view(2, 3, 4):permute(3, 1, 2),
  }
  local got = roundtrip("views", ts)
  for k, v in pairs(ts) do
    T.eq(v:is_contiguous(), false, k .. " is a real strided view")
    same(got[k], v, k)
  end
  -- element by element against Lua loops over the source
  local tt, xt = got.transposed:totable(), x:totable()
  for i = 1, 6 do
    for j = 1, 4 do T.eq(tt[i][j], xt[j][i], "transposed element") end
  end
  T.eq(got.expanded[3][4], 3)
end)

T.test("0-dim and empty tensors", function()
  local ts = {
    scalar = sere.tensor(2.75),
    iscalar = sere.tensor(-5, {dtype = "i64"}),
    empty = sere.zeros(0),
    empty2 = sere.zeros({2, 0, 5}, {dtype = "i64"}),
    empty_bool = sere.zeros({0, 3}, {dtype = "bool"}),
  }
  local got = roundtrip("small", ts)
  for k, v in pairs(ts) do same(got[k], v, k) end
  T.eq(#got.scalar:shape(), 0)
  T.eq(got.scalar:item(), 2.75)
  T.eq(got.iscalar:item(), -5)
  T.eq(got.empty2:shape()[3], 5)
  -- no tensors at all
  local none, meta = roundtrip("none", {}, {only = "metadata"})
  T.eq(count(none), 0)
  T.eq(meta.only, "metadata")
  none, meta = roundtrip("nothing", {})
  T.eq(count(none) + count(meta), 0)
end)

T.test("metadata: strings, numbers converted, escapes and unicode", function()
  local meta = {
    plain = "value",
    epoch = 12,
    lr = 0.5,
    tricky = 'quote " backslash \\ newline \n tab \t bell \a unicode \u{e9}\u{1F600}',
    [""] = "empty key",
  }
  local _, got = roundtrip("meta", {w = sere.ones(2)}, meta)
  T.eq(count(got), 5)
  T.eq(got.plain, "value")
  T.eq(got.epoch, "12")
  T.eq(got.lr, "0.5")
  T.eq(got.tricky, meta.tricky)
  T.eq(got[""], "empty key")
end)

T.test("a tensor requiring grad is saved by value", function()
  local w = sere.randn(3, 2)
  w.requires_grad = true
  local y = w:t() -- a non-leaf with a grad_fn
  local got = roundtrip("grad", {w = w, y = y})
  T.eq(got.w.requires_grad, false)
  T.eq(got.y.requires_grad, false)
  same(got.w, w:detach(), "w")
  same(got.y, y:detach(), "y")
end)

T.test("files are deterministic, sorted by name, padded to 8 bytes", function()
  local ts = {zeta = sere.arange(3), alpha = sere.ones(2), mid = sere.zeros(1, 2)}
  local meta = {b = "2", a = "1", c = "3"}
  local p1, p2 = tmp("det1"), tmp("det2")
  sio.save(p1, ts, meta)
  sio.save(p2, {mid = ts.mid, alpha = ts.alpha, zeta = ts.zeta}, {c = "3", a = "1", b = "2"})
  local s1 = read(p1)
  T.eq(s1 == read(p2), true, "identical bytes")
  local n = string.unpack("<I8", s1)
  T.eq(n % 8, 0, "header length multiple of 8")
  local hdr = s1:sub(9, 8 + n)
  T.eq(hdr:find('"alpha"', 1, true) < hdr:find('"mid"', 1, true), true)
  T.eq(hdr:find('"mid"', 1, true) < hdr:find('"zeta"', 1, true), true)
  T.eq(hdr:find('"alpha":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', 1, true) ~= nil, true, hdr)
  T.eq(hdr:find('{"__metadata__":{"a":"1","b":"2","c":"3"}', 1, true) ~= nil, true, hdr)
  T.eq(#s1, 8 + n + 8 + 8 + 24)
end)

T.test("fixtures written by the safetensors library: F32, I64, I32, U8, BOOL, metadata", function()
  local t, m = sio.load("tests/data/io/mixed.safetensors")
  T.eq(count(t), 7)
  local w = t.weight:totable()
  local want = {{0.5, -1.25, 3.0}, {1e-3, -7.75, 42.0}}
  for i = 1, 2 do
    for j = 1, 3 do T.eq(w[i][j], f32(want[i][j]), "weight") end
  end
  T.eq(t.scalar:dtype(), "f32"); T.eq(#t.scalar:shape(), 0); T.eq(t.scalar:item(), 3.5)
  T.eq(t.empty:shape()[1], 0); T.eq(t.empty:shape()[2], 3)
  T.eq(t.steps:dtype(), "i64")
  local s = t.steps:totable()
  T.eq(s[1], 1); T.eq(s[2], -2); T.eq(s[3], (1 << 62) + 1); T.eq(s[4], math.mininteger)
  T.eq(t.counts:dtype(), "i32")
  T.eq(t.counts[2][1], 2147483647); T.eq(t.counts[2][2], -2147483648); T.eq(t.counts[1][2], -2)
  T.eq(t.pixels:dtype(), "u8")
  local px = t.pixels:totable()
  T.eq(px[1] + px[2] + px[3] + px[4], 0 + 1 + 128 + 255); T.eq(px[4], 255)
  T.eq(t.mask:dtype(), "bool")
  T.eq(t.mask[1][1], true); T.eq(t.mask[1][2], false); T.eq(t.mask[2][2], true)
  T.eq(m.format, "np")
  T.eq(m.note, 'h\u{e9}llo "quoted"\n\u{2713}')
end)

T.test("fixtures: F16 and F64 are converted to f32", function()
  local t, m = sio.load("tests/data/io/half_double.safetensors")
  T.eq(count(m), 0)
  T.eq(t.h:dtype(), "f32")
  local h = t.h:totable()
  -- f16 values, hand-decoded: 0.1 is 0x2e66 = 1.599609375 * 2^-4; 2^-24 is the smallest subnormal
  local want = {{1.0, -2.5, 65504.0, 2.0 ^ -24}, {0.0999755859375, math.huge, -0.0, -math.huge}}
  for i = 1, 2 do
    for j = 1, 4 do T.eq(h[i][j], want[i][j], "f16 element") end
  end
  T.eq(1 / h[2][3], -math.huge, "negative zero keeps its sign")
  T.eq(t.d:dtype(), "f32")
  local d = t.d:totable()
  T.eq(d[1], f32(0.1)); T.eq(d[2], f32(-1e10)); T.eq(d[3], 0.0)
end)

T.test("fixtures: BF16 bits as written by safetensors", function()
  local t, m = sio.load("tests/data/io/bf16.safetensors")
  T.eq(t.b:dtype(), "bf16")
  local b = t.b:totable()
  T.eq(b[1][1], 1.0); T.eq(b[1][2], -2.5); T.eq(b[2][1], math.huge); T.eq(b[2][2], 2.0 ^ -133)
  T.eq(t.f[1], 1.0)
  T.eq(m.written_by, "safetensors.serialize")
end)

-- ---- corrupted files ---------------------------------------------------
local function file(header, data) return string.pack("<I8", #header) .. header .. (data or "") end
local function entry(name, dtype, shape, b, e)
  return string.format('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%s,%s]}', name, dtype, shape, b, e)
end
local F32x2 = entry("a", "F32", "2", 0, 8)
local BYTES8 = string.rep("\1", 8)

-- Loading `bytes` must fail with a message naming the file and containing `fragment`.
local function rejects(name, bytes, fragment)
  local p = tmp("bad_" .. name)
  write(p, bytes)
  local ok, err = pcall(sio.load, p)
  if ok then error(string.format("case '%s': expected an error containing '%s', loaded fine", name, fragment), 2) end
  err = tostring(err)
  if not err:find(p, 1, true) or not err:find(fragment, 1, true) then
    error(string.format("case '%s': error '%s' lacks the file name or '%s'", name, err, fragment), 2)
  end
  return err
end

T.test("truncated files: every length fails cleanly", function()
  local good = file("{" .. entry("a", "F32", "2", 0, 8) .. "," .. entry("b", "I64", "1", 8, 16) .. "}  ",
    string.rep("\3", 16))
  local n = string.unpack("<I8", good)
  local p = tmp("good")
  write(p, good)
  T.eq(count((sio.load(p))), 2)
  for len = 0, #good - 1 do
    local want = len < 8 and "too short" or len < 8 + n and "runs past the end of the file" or
      "run past the end of the data buffer"
    rejects("trunc" .. len, good:sub(1, len), want)
  end
end)

T.test("header length: huge, larger than the file, zero", function()
  rejects("hlen_huge", string.pack("<I8", 1 << 40) .. "{}", "exceeds the limit of 100 MiB")
  rejects("hlen_max", string.pack("<i8", -1) .. "{}", "exceeds the limit")
  rejects("hlen_past", string.pack("<I8", 100) .. "{}", "header length 100 runs past the end of the file")
  rejects("hlen_zero", string.pack("<I8", 0), "expected '{', found the end of the header")
end)

T.test("invalid JSON is rejected at the offending byte", function()
  local cases = {
    {"open", "{", "expected a string"},
    {"array", "[]", "expected '{', found '['"},
    {"novalue", '{"a":}', "expected '{', found '}'"},
    {"single_quotes", "{'a':1}", "expected a string"},
    {"trailing_comma", "{" .. F32x2 .. ",}", "expected a string"},
    {"missing_comma", "{" .. F32x2 .. F32x2 .. "}", "expected ',' or '}', found"},
    {"missing_close", "{" .. F32x2, "expected ',' or '}', found the end of the header"},
    {"array_unclosed", '{"a":{"dtype":"F32","shape":[2', "expected ',' or ']', found the end"},
    {"garbage_after", "{" .. F32x2 .. "} x", "unexpected characters after the header object"},
    {"two_objects", "{}{}", "unexpected characters after the header object"},
    {"no_colon", '{"a" {}}', "expected ':'"},
    {"unterminated", '{"abc', "unterminated string"},
    {"backslash_end", '{"a\\', "unterminated string"},
    {"control_char", '{"a\nb":{}}', "control character in a string"},
    {"bad_escape", '{"a\\x":{}}', "unknown escape"},
    {"short_u", '{"a\\u12":{}}', "bad \\u escape"},
    {"nonhex_u", '{"a\\u12g4":{}}', "bad \\u escape"},
    {"lone_low", '{"a\\udc00":{}}', "lone low surrogate"},
    {"lone_high", '{"a\\ud800x":{}}', "high surrogate"},
    {"nul_escape", '{"a\\u0000":{}}', "may not contain \\u0000"},
    {"bad_utf8", '{"a\xff":{}}', "invalid UTF-8"},
    {"overlong_utf8", '{"a\xc0\xaf":{}}', "invalid UTF-8"},
    {"surrogate_utf8", '{"a\xed\xa0\x80":{}}', "invalid UTF-8"},
    {"float", "{" .. entry("a", "F32", "1.5", 0, 8) .. "}", "non-integer number"},
    {"exponent", "{" .. entry("a", "F32", "2", "0e0", 8) .. "}", "non-integer number"},
    {"leading_zero", "{" .. entry("a", "F32", "02", 0, 8) .. "}", "leading zero"},
    {"plus", "{" .. entry("a", "F32", "+2", 0, 8) .. "}", "expected an integer"},
    {"int_overflow", "{" .. entry("a", "F32", "99999999999999999999", 0, 8) .. "}", "does not fit in 64 bits"},
    {"int_overflow_neg", "{" .. entry("a", "F32", "-9223372036854775809", 0, 8) .. "}", "does not fit in 64 bits"},
    {"string_shape", '{"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}', "expected '['"},
    {"true", '{"a":true}', "expected '{'"},
  }
  for _, c in ipairs(cases) do
    local err = rejects(c[1], file(c[2], BYTES8), c[3])
    T.eq(err:find("invalid header JSON at header byte", 1, true) ~= nil, true, c[1] .. ": " .. err)
  end
end)

T.test("bad entries: dtype, shape, fields", function()
  local cases = {
    {"dtype_i8", "{" .. entry("w", "I8", "8", 0, 8) .. "}", "tensor 'w': dtype 'I8' is not supported"},
    {"dtype_lower", "{" .. entry("w", "f32", "2", 0, 8) .. "}", "dtype 'f32' is not supported"},
    {"dtype_number", '{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}', "tensor 'w': dtype must be a string"},
    {"negative_size", "{" .. entry("w", "F32", "-2", 0, 8) .. "}", "tensor 'w': negative size -2 in shape [-2]"},
    {"shape_overflow", "{" .. entry("w", "F32", "4294967296,4294967296,16", 0, 8) .. "}", "is too large"},
    {"shape_overflow_zero", "{" .. entry("w", "F32", "0,4294967296,4294967296", 0, 0) .. "}", "is too large"},
    {"too_many_dims", "{" .. entry("w", "U8", "1,1,1,1,1,1,1,1,8", 0, 8) .. "}", "shape has more than 8 entries"},
    {"unknown_field", '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}', "unknown field \"x\""},
    {"duplicate_field", '{"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
      "duplicate field \"dtype\""},
    {"missing_field", '{"w":{"dtype":"F32","data_offsets":[0,8]}}', "tensor 'w': entry lacks \"shape\""},
    {"empty_entry", '{"w":{}}', "tensor 'w': entry is empty"},
    {"offsets_1", "{" .. entry("w", "F32", "2", 0, "") .. "}", "expected an integer"},
    {"offsets_one", '{"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}}', "data_offsets must be [begin, end]"},
    {"offsets_three", '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}}', "data_offsets has more than 2"},
    {"metadata_number", '{"__metadata__":{"k":1}}', "metadata value for key 'k' must be a string"},
    {"metadata_nested", '{"__metadata__":{"k":{"x":{"y":"z"}}}}', "metadata value for key 'k' must be a string"},
    {"metadata_array", '{"__metadata__":[]}', "expected '{', found '['"},
  }
  for _, c in ipairs(cases) do rejects(c[1], file(c[2], BYTES8), c[3]) end
end)

T.test("bad offsets: mismatch, range, overlap, holes", function()
  local data48 = string.rep("\0", 48)
  rejects("mismatch", file("{" .. entry("w", "F32", "3,4", 0, 100) .. "}", data48),
    "tensor 'w': data_offsets [0, 100] do not match shape [3, 4] of F32 (48 bytes)")
  rejects("past_end", file("{" .. entry("w", "F32", "3,4", 16, 64) .. "}", data48),
    "tensor 'w': data_offsets [16, 64] run past the end of the data buffer (48 bytes)")
  rejects("negative", file("{" .. entry("w", "F32", "1", -4, 0) .. "}", data48), "are negative")
  rejects("reversed", file("{" .. entry("w", "F32", "1", 8, 4) .. "}", data48), "end before they begin")
  rejects("huge_offsets", file("{" .. entry("w", "U8", "8", "9223372036854775800", "9223372036854775807") .. "}",
    BYTES8), "do not match shape")
  rejects("overlap", file("{" .. entry("a", "F32", "2", 0, 8) .. "," .. entry("b", "F32", "2", 4, 12) .. "}",
    string.rep("\0", 12)), "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]")
  rejects("same_offsets", file("{" .. entry("a", "F32", "2", 0, 8) .. "," .. entry("b", "I32", "2", 0, 8) .. "}",
    BYTES8), "overlap")
  rejects("hole", file("{" .. entry("a", "F32", "1", 0, 4) .. "," .. entry("b", "F32", "1", 8, 12) .. "}",
    string.rep("\0", 12)), "tensor 'b': bytes [4, 8) of the data buffer before it belong to no tensor")
  rejects("leading_hole", file("{" .. entry("a", "F32", "1", 4, 8) .. "}", BYTES8), "bytes [0, 4)")
  rejects("trailing_bytes", file("{" .. F32x2 .. "}", BYTES8 .. "xy"),
    "bytes [8, 10) at the end of the data buffer belong to no tensor")
  rejects("no_tensors_but_data", file("{}", "x"), "bytes [0, 1) at the end")
end)

T.test("duplicate keys and deep nesting", function()
  rejects("dup_tensor", file("{" .. F32x2 .. "," .. F32x2 .. "}", BYTES8), "tensor name 'a' appears twice")
  rejects("dup_metadata_key", file('{"__metadata__":{"k":"1","k":"2"}}'), "metadata key 'k' appears twice")
  rejects("dup_metadata", file('{"__metadata__":{},"__metadata__":{}}'), "duplicate key \"__metadata__\"")
  rejects("deep_array", file('{"a":' .. string.rep("[", 100000) .. string.rep("]", 100000) .. "}"),
    "expected '{', found '['")
  rejects("deep_shape", file('{"a":{"dtype":"F32","shape":[[[[2]]]],"data_offsets":[0,8]}}', BYTES8),
    "expected an integer")
  rejects("deep_object", file('{"a":{"dtype":{"x":{"y":{}}},"shape":[2],"data_offsets":[0,8]}}', BYTES8),
    "dtype must be a string")
end)

T.test("long names are cut in messages", function()
  local long = string.rep("n", 5000)
  local err = rejects("long_name", file("{" .. entry(long, "I8", "8", 0, 8) .. "}", BYTES8), "is not supported")
  T.eq(#err < 600, true, "message length " .. #err)
end)

T.test("not a safetensors file, missing file, directory", function()
  rejects("text", "hello, this is not a tensor file at all", "exceeds the limit")
  local missing = base .. "_does_not_exist.safetensors"
  T.raises(function() sio.load(missing) end, "cannot open: No such file or directory")
  T.raises(function() sio.load("tests") end, "tests: not a regular file")
  T.raises(function() sio.load() end, "bad argument #1")
end)

-- ---- writing -----------------------------------------------------------
T.test("misuse of save raises clear errors", function()
  local p = tmp("misuse")
  local x = sere.ones(2)
  T.raises(function() sio.save(p, {w = "not a tensor"}) end, "io.save: 'w' is not a tensor %(got string%)")
  T.raises(function() sio.save(p, {x}) end, "tensor names must be strings, got a number key")
  T.raises(function() sio.save(p, {[""] = x}) end, "tensor names must be non%-empty")
  T.raises(function() sio.save(p, {__metadata__ = x}) end, "'__metadata__' is reserved")
  T.raises(function() sio.save(p, {["a\0b"] = x}) end, "contains a NUL byte")
  T.raises(function() sio.save(p, {["bad\xff"] = x}) end, "is not valid UTF%-8")
  T.raises(function() sio.save(p, {w = x}, {flag = true}) end, "metadata value for 'flag' must be a string or a number, got boolean")
  T.raises(function() sio.save(p, {w = x}, {t = {}}) end, "metadata value for 't' must be a string or a number, got table")
  T.raises(function() sio.save(p, {w = x}, {[1] = "a"}) end, "metadata keys must be strings")
  T.raises(function() sio.save(p, {w = x}, {k = "v\0"}) end, "metadata value of 'k' contains a NUL byte")
  T.raises(function() sio.save(p, {w = x}, {k = "\xfe"}) end, "metadata 'k' is not valid UTF%-8")
  T.raises(function() sio.save(p, "w") end, "bad argument #2")
  T.raises(function() sio.save(p, {}, "meta") end, "bad argument #3")
  T.eq(exists(p), false, "nothing written")
end)

-- A private directory to watch for leftovers (os.execute: the test runs on POSIX).
local dir = base .. "_dir"
local have_dir = os.execute("mkdir " .. dir)
local function listing()
  local ls = io.popen("ls -A " .. dir)
  local names = {}
  for n in ls:lines() do names[#names + 1] = n end
  ls:close()
  table.sort(names)
  return table.concat(names, " ")
end

if have_dir then
  T.test("atomic write: failures leave nothing behind, overwriting works", function()
    local x = sere.arange(4)
    T.raises(function() sio.save(dir .. "/missing/x.safetensors", {x = x}) end,
      "cannot create the temporary file '" .. dir:gsub("%p", "%%%0") .. "/missing/x.safetensors.tmp.%d+': No such file or directory")
    T.eq(listing(), "", "missing directory")
    -- the rename fails when the destination is a non-empty directory: the temporary must go
    assert(os.execute("mkdir " .. dir .. "/target && touch " .. dir .. "/target/keep"))
    T.raises(function() sio.save(dir .. "/target", {x = x}) end, "cannot rename")
    T.eq(listing(), "target", "after a failed rename")
    local p = dir .. "/w.safetensors"
    sio.save(p, {x = x, y = sere.ones(3)}, {v = "1"})
    sio.save(p, {z = sere.zeros(2, 2)}, {v = "2"})
    local t, m = sio.load(p)
    T.eq(count(t), 1); T.eq(t.z:shape()[1], 2); T.eq(m.v, "2")
    T.eq(listing(), "target w.safetensors", "after overwriting")
  end)
else
  T.skip("atomic write", "cannot create a directory with mkdir")
end

T.test("large tensor round trip", function()
  local x = sere.randn({257, 1031}, {generator = sere.Generator(3)})
  local got = roundtrip("large", {x = x, xt = x:t()})
  same(got.x, x, "x")
  same(got.xt, x:t(), "xt")
end)

for _, p in ipairs(made) do os.remove(p) end
os.remove(base)
if have_dir then os.execute("rm -rf " .. dir) end
T.finish()
