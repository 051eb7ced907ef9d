-- test_cuda_tensor.lua — device tensors: transfers between cpu and cuda for
-- every dtype and for strided views, copies and dtype conversion on the
-- device, creation on the device, reading elements back, autograd through
-- a device transfer, and the caching allocator (steady state makes no
-- cudaMalloc; out-of-memory is an error the program survives). Without a
-- GPU it checks that asking for one fails with a clear message and reports
-- the device tests as skipped.
local sere = require "sere"
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")

if not P.available then
  T.test("without a GPU, t:cuda() says why it cannot", function()
    local err = T.raises(function() return sere.ones({2}):cuda() end)
    assert(err:find("no CUDA device") or err:find("built without CUDA"), err)
    T.raises(function() return sere.zeros({2}, {device = "cuda"}) end, "CUDA")
    T.raises(function() return sere.zeros({2}, {device = "tpu"}) end, "unknown device 'tpu'")
    T.raises(function() return sere.zeros({2}, {device = "cuda:3"}) end, "one GPU")
    T.eq(sere.cuda.is_available(), false)
    T.eq(sere.ones({2}):device(), "cpu")
  end)
  for _, name in ipairs({"round trips", "device copies", "creation", "autograd", "allocator"}) do
    T.skip("cuda tensor: " .. name, P.reason)
  end
  T.finish()
  return
end

local DTYPES = {"f32", "bf16", "i32", "i64", "u8", "bool"}

local function sample(dtype, shape)
  local x = P.randn(shape) * 50
  if dtype == "bool" then return x:gt(0) end
  if dtype == "u8" then return x:abs():to("u8") end
  return x:to(dtype)
end

T.test("cuda tensor: round trips", function()
  for _, d in ipairs(DTYPES) do
    local x = sample(d, {3, 5, 7})
    local g = x:cuda()
    T.eq(g:device(), "cuda")
    T.eq(g:dtype(), d)
    T.eq(g:cpu(), x, "round trip " .. d)
    T.eq(x:transpose(1, 3):cuda():cpu(), x:transpose(1, 3), "strided upload " .. d)
    T.eq(g:transpose(1, 3):cpu(), x:transpose(1, 3), "strided download " .. d)
    T.eq(g:narrow(2, 2, 3):to("cpu"), x:narrow(2, 2, 3), "narrowed " .. d)
  end
  local big = sere.tensor({{2 ^ 53 + 1, -7}}, {dtype = "i64"})
  T.eq(big:cuda():cpu():totable()[1][1], 2 ^ 53 + 1, "i64 exact")
end)

T.test("cuda tensor: device copies", function()
  for _, from in ipairs(DTYPES) do
    local x = sample(from, {4, 9})
    for _, to in ipairs(DTYPES) do
      T.eq(x:cuda():to(to):cpu(), x:to(to), from .. " -> " .. to .. " on the device")
    end
    T.eq(x:cuda():t():contiguous():cpu(), x:t():contiguous(), "strided device copy " .. from)
  end
  local dst = sere.zeros({6, 4}, {device = "cuda"})
  dst:narrow(1, 2, 3):copy_(sere.ones({3, 4}) * 2)
  T.eq(dst:cpu():sum():item(), 24, "cpu -> cuda view copy_")
  local host = sere.zeros({4, 6})
  host:t():copy_(dst)
  T.eq(host:t(), dst:cpu(), "cuda -> strided cpu copy_")
end)

T.test("cuda tensor: creation and reading back", function()
  local z = sere.zeros({2, 3}, {device = "cuda"})
  T.eq(z:device(), "cuda")
  T.eq(z:cpu(), sere.zeros({2, 3}))
  T.eq(sere.ones_like(z):device(), "cuda", "ones_like keeps the device")
  T.eq(sere.full({3}, 2.5, {device = "cuda"}):cpu(), {2.5, 2.5, 2.5})
  local r = sere.randn({4, 4}, {generator = sere.Generator(3), device = "cuda"})
  T.eq(r:cpu(), sere.randn({4, 4}, {generator = sere.Generator(3)}), "randn on the device = on the cpu")
  local x = sere.tensor({{1.5, 2}, {3, 4}}, {device = "cuda"})
  T.eq(x[2][1], 3)
  T.eq(x:select(1, 1):select(1, 2):item(), 2)
  T.eq(x:totable()[2][2], 4)
  T.eq(sere.tensor({7}, {dtype = "i64", device = "cuda"}):item(), 7)
  T.eq(sere.tensor({true, false}, {device = "cuda"}):totable()[1], true)
  T.eq(sere.tensor(x):device(), "cuda", "sere.tensor(t) keeps the device")
  T.eq(x:to("cpu"):device(), "cpu")
  T.eq(x:to("cuda"):shares_storage(x), true, "to() on the same device is t itself")
end)

T.test("cuda tensor: autograd through a transfer", function()
  local x = T.leaf(P.randn({3, 4}))
  local y = x:cuda()
  T.eq(y.requires_grad, true)
  local g = P.randn({3, 4})
  y:backward(g:cuda())
  T.eq(x.grad:device(), "cpu")
  T.eq(x.grad, g, "gradient comes back to the cpu leaf")
  local w = T.leaf(P.randn({2})):cuda():detach()
  w.requires_grad = true
  w:cpu():backward(sere.ones({2}))
  T.eq(w.grad:device(), "cuda", "and to a cuda leaf")
end)

T.test("cuda tensor: allocator", function()
  collectgarbage()
  local function step()
    local a = sere.zeros({256, 1000}, {device = "cuda"})
    local b = sere.zeros({3, 333}, {device = "cuda"})
    local c = a:narrow(1, 1, 7):clone()
    return a, b, c
  end
  step()
  collectgarbage()
  local before = sere.cuda.memory_stats()
  for _ = 1, 5 do
    step()
    collectgarbage()
  end
  local after = sere.cuda.memory_stats()
  T.eq(after.device_mallocs, before.device_mallocs, "steady state makes no cudaMalloc")
  T.eq(after.allocated, before.allocated, "and holds no more memory")
  assert(after.peak_allocated >= 256 * 1000 * 4, "peak counts the largest step")
  assert(after.reserved >= after.allocated)
  local _, total = sere.cuda.mem_info()
  local err = T.raises(function() return sere.zeros({total // 4 + 1000000}, {device = "cuda"}) end,
    "out of memory")
  assert(err:find("MiB"), err)
  T.eq(sere.ones({10}, {device = "cuda"}):cpu():sum():item(), 10, "still works after out-of-memory")
  sere.cuda.empty_cache()
  assert(sere.cuda.memory_stats().reserved <= after.reserved)
end)

T.finish()
