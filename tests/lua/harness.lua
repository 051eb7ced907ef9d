-- harness.lua — the tiny test harness every Lua test file uses.
--   local T = dofile("tests/lua/harness.lua")
--   T.test("name", function() ... end)    -- an error fails the test
--   T.skip("name", "reason")               -- counted and printed as skipped
--   T.raises(fn, "pattern")                -- fn must raise an error matching pattern
--   T.eq(a, b, what)  T.close(a, b, atol, rtol, what)   -- tensors or numbers
--   T.leaf(t)                              -- a detached copy of t that requires grad
--   T.write_file(path, bytes), T.read_file(path) -- whole binary files
--   T.finish()                             -- prints "N passed, N failed, N skipped"
-- Exit status: 1 if anything failed, 77 (ctest's "skipped") if everything
-- was skipped, else 0.
local sere = require "sere"

local T = {passed = 0, failed = 0, skipped = 0}
local only = os.getenv("SERE_TEST_FILTER")

function T.test(name, fn)
  if only and not name:find(only, 1, true) then return end
  local ok, err = xpcall(fn, debug.traceback)
  if ok then
    T.passed = T.passed + 1
  else
    T.failed = T.failed + 1
    io.stderr:write(string.format("FAIL %s\n  %s\n", name, tostring(err):gsub("\n", "\n  ")))
  end
end

function T.skip(name, reason)
  T.skipped = T.skipped + 1
  print(string.format("SKIP %s: %s", name, reason))
end

function T.raises(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error("expected an error" .. (pattern and (" matching '" .. pattern .. "'") or ""), 2) end
  if pattern and not tostring(err):find(pattern) then
    error(string.format("error '%s' does not match '%s'", tostring(err), pattern), 2)
  end
  return err
end

function T.eq(a, b, what)
  if sere.is_tensor(a) then
    sere.testing.assert_close(a, sere.is_tensor(b) and b or sere.tensor(b, {dtype = a:dtype()}), 0, 0, what)
  elseif a ~= b then
    error(string.format("%s: expected %s, got %s", what or "eq", tostring(b), tostring(a)), 2)
  end
end

function T.close(a, b, atol, rtol, what)
  if sere.is_tensor(a) then
    if not sere.is_tensor(b) then b = sere.tensor(b, {dtype = "f32"}) end
    sere.testing.assert_close(a, b, atol, rtol, what)
  elseif math.abs(a - b) > (atol or 1e-6) + (rtol or 1e-6) * math.abs(b) then
    error(string.format("%s: %.9g is not close to %.9g", what or "close", a, b), 2)
  end
end

--- A fresh leaf for gradient tests: a detached contiguous copy of t that
--- requires grad (the original is never modified or aliased).
function T.leaf(t)
  t = t:detach():clone()
  t.requires_grad = true
  return t
end

function T.write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

function T.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function T.finish()
  print(string.format("%d passed, %d failed, %d skipped", T.passed, T.failed, T.skipped))
  if T.failed > 0 then os.exit(1) end
  if T.passed == 0 and T.skipped > 0 then os.exit(77) end
  if T.passed == 0 then io.stderr:write("no tests ran\n"); os.exit(1) end
  os.exit(0)
end

return T
