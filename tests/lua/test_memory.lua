-- test_memory.lua — Lua's collector is paced by tensor storage, so a loop
-- that allocates big tensors holds steady memory with no collectgarbage(),
-- and backward frees what nodes saved.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"

local MiB = 1024 * 1024

T.test("a loop of 16 MiB tensors stays bounded without collectgarbage", function()
  collectgarbage()
  local base = sere.storage_bytes()
  local peak = 0
  for _ = 1, 200 do
    local t = sere.zeros(4 * MiB)   -- 16 MiB of f32
    t = t:reshape(2048, 2048)
    peak = math.max(peak, sere.storage_bytes() - base)
  end
  -- 200 iterations allocate 3.2 GiB in total; the live set must stay small.
  assert(peak < 256 * MiB, string.format("peak live storage %.0f MiB", peak / MiB))
end)

T.test("backward releases the tensors nodes saved", function()
  local x = sere.randn({1024, 1024}, {requires_grad = true})
  collectgarbage()
  local y = x:transpose(1, 2):contiguous():reshape(-1):narrow(1, 1, 1000)
  local before = sere.storage_bytes()
  y:backward(sere.ones(1000))
  y = nil
  collectgarbage()
  local after = sere.storage_bytes()
  -- what remains: x and x.grad (4 MiB each)
  assert(after <= before + 4 * MiB + 64 * 1024,
    string.format("before %.1f MiB after %.1f MiB", before / MiB, after / MiB))
end)

T.finish()
