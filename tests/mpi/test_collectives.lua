-- test_collectives.lua — sere.dist in whatever world it is started in:
-- alone (ctest mpi.collectives_single: rank 0 of 1, MPI never initialised)
-- and under `mpirun -np 2` (mpi.collectives). Checks, for every dtype
-- each op supports: all_reduce "sum" / "avg" / "max", all_gather and
-- broadcast from every root against values worked out in Lua from what
-- each rank contributed; the argument errors (named op, dtype and shape);
-- calls that differ between ranks (an error on every rank, not a hang);
-- SyncBatchNorm (each rank holds a slice of one batch: outputs, running
-- statistics and input gradients equal a batch norm over the whole batch);
-- and the training helpers broadcast_module, sync_batchnorm and
-- average_gradients.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local nn = require "sere.nn"
local dist = require "sere.dist"

local rank, world = dist.rank(), dist.world_size()
-- sums of a few small f32 numbers and the batch norm over 2 slices: only
-- the summation order differs from the reference
local ATOL, RTOL = 1e-5, 1e-5

-- What rank r contributes: small values, exact in every dtype (bf16
-- included) and in their sums, with negatives where the dtype has them.
local function contribution(r, dtype)
  if dtype == "bool" then return {r % 2 == 0, r % 2 == 1, false, true} end
  if dtype == "u8" then return {r + 1, 3 * r, 7, 100 - r} end
  if dtype == "i32" or dtype == "i64" then return {r + 1, -(r + 2), 7, 1000000 * (r + 1)} end
  return {1.5 * (r + 1), -0.25 - r, 3, 2 ^ (r + 1)}
end

local function expected(op, dtype)
  local out = contribution(0, dtype)
  for r = 1, world - 1 do
    local v = contribution(r, dtype)
    for i = 1, #out do
      if dtype == "bool" then out[i] = out[i] or v[i]
      elseif op == "max" then out[i] = math.max(out[i], v[i])
      else out[i] = out[i] + v[i] end
    end
  end
  if op == "avg" then for i = 1, #out do out[i] = out[i] / world end end
  return sere.tensor(out, {dtype = dtype})
end

-- An array, not a map: every rank must make the calls in the same order,
-- and the order of pairs() differs between processes.
local SUPPORTED = {{"sum", {"f32", "bf16", "i32", "i64", "u8"}}, {"avg", {"f32", "bf16"}},
                   {"max", {"f32", "bf16", "i32", "i64", "u8", "bool"}}}

T.test("rank, world size, local rank, is_distributed", function()
  assert(rank >= 0 and rank < world, "rank in [0, world)")
  assert(dist.local_rank() >= 0 and dist.local_rank() <= rank, "local rank")
  T.eq(dist.is_distributed(), os.getenv("OMPI_COMM_WORLD_SIZE") ~= nil, "is_distributed under mpirun only")
  T.eq(dist.is_main(), rank == 0, "is_main")
  dist.barrier()
end)

T.test("all_reduce: sum, avg, max for every dtype, in place", function()
  for _, case in ipairs(SUPPORTED) do
    local op, dtypes = case[1], case[2]
    for _, dtype in ipairs(dtypes) do
      local t = sere.tensor(contribution(rank, dtype), {dtype = dtype})
      local r = dist.all_reduce(t, op)
      T.eq(t, expected(op, dtype), op .. " " .. dtype)
      assert(rawequal(r, t), "all_reduce returns its argument")
    end
  end
  -- "sum" is the default; multi-dim and 0-dim tensors; a big one goes through
  local m = sere.ones(3, 4, 5):mul(rank + 1)
  dist.all_reduce(m)
  T.eq(m, sere.ones(3, 4, 5):mul(world * (world + 1) // 2), "3-d sum")
  local s = sere.tensor(rank + 0.5)
  dist.all_reduce(s, "max")
  T.eq(s:item(), world - 0.5, "0-d max")
  local big = sere.full({1000000}, rank + 1.0)
  dist.all_reduce(big, "avg")
  T.eq(big, sere.full({1000000}, (world + 1) / 2), "1e6 elements")
end)

T.test("all_gather: rank order along dim 1, every dtype, any layout", function()
  for _, dtype in ipairs({"f32", "bf16", "i32", "i64", "u8", "bool"}) do
    local g = dist.all_gather(sere.tensor({contribution(rank, dtype)}, {dtype = dtype}))
    local rows = {}
    for r = 0, world - 1 do rows[r + 1] = contribution(r, dtype) end
    T.eq(g, sere.tensor(rows, {dtype = dtype}), "all_gather " .. dtype)
  end
  local t = sere.arange(6):reshape(2, 3):add(10 * rank):transpose(1, 2) -- [3, 2], not contiguous
  local g = dist.all_gather(t)
  T.eq(g:shape()[1], 3 * world, "dim 1 grows by the world size")
  for r = 0, world - 1 do
    T.eq(g:narrow(1, 3 * r + 1, 3), sere.arange(6):reshape(2, 3):add(10 * r):transpose(1, 2), "block of rank " .. r)
  end
  T.eq(dist.all_gather(sere.tensor(rank)), sere.arange(world), "0-d tensors stack into [world]")
end)

T.test("broadcast: from every root, every dtype, in place", function()
  for root = 0, world - 1 do
    for _, dtype in ipairs({"f32", "bf16", "i32", "i64", "u8", "bool"}) do
      local t = sere.tensor(contribution(rank, dtype), {dtype = dtype})
      assert(rawequal(dist.broadcast(t, root), t), "broadcast returns its argument")
      T.eq(t, sere.tensor(contribution(root, dtype), {dtype = dtype}), "broadcast " .. dtype .. " from " .. root)
    end
  end
  local t = sere.full({2, 2}, rank + 0.0)
  dist.broadcast(t) -- root 0 by default
  T.eq(t, sere.zeros(2, 2), "default root 0")
end)

T.test("errors name the op, dtype and shape", function()
  T.raises(function() dist.all_reduce(sere.tensor({1, 2}), "avg") end,
    'dist.all_reduce: "avg" needs a float tensor %(f32 or bf16%), got i64 of shape %[2%]')
  T.raises(function() dist.all_reduce(sere.tensor({true}), "sum") end,
    'dist.all_reduce: a bool tensor supports only "max" %(logical or%), got "sum"')
  T.raises(function() dist.all_reduce(sere.zeros(2), "mean") end, 'dist.all_reduce: unknown op "mean"')
  T.raises(function() dist.all_reduce(sere.zeros(3, 2):transpose(1, 2), "sum") end,
    "dist.all_reduce: works in place on a contiguous tensor; got a non%-contiguous f32 tensor of shape %[2, 3%]")
  T.raises(function() dist.broadcast(sere.zeros(3, 2):transpose(1, 2)) end, "dist.broadcast: works in place on a contiguous")
  T.raises(function() dist.broadcast(sere.zeros(2), world) end,
    "dist.broadcast: root " .. world .. " is not a rank of this world of " .. world)
  T.raises(function() dist.broadcast(sere.zeros(2), -1) end, "dist.broadcast: root %-1 is not a rank")
  T.raises(function() dist.all_reduce({}) end, "dist.all_reduce")
  T.raises(function() dist.all_gather(7) end, "dist.all_gather")
end)

if world > 1 then
  T.test("a call that differs between ranks fails on every rank, naming both", function()
    local n = rank == 0 and 4 or 3
    T.raises(function() dist.all_reduce(sere.zeros(n), "sum") end,
      'dist.all_reduce: the ranks disagree: rank 0 passed f32 %[4%] %("sum"%), rank 1 passed f32 %[3%] %("sum"%)')
    T.raises(function() dist.all_reduce(sere.zeros(4), rank == 0 and "sum" or "max") end,
      'rank 0 passed f32 %[4%] %("sum"%), rank 1 passed f32 %[4%] %("max"%)')
    T.raises(function() dist.all_gather(sere.zeros({2}, {dtype = rank == 0 and "f32" or "i32"})) end,
      "dist.all_gather: the ranks disagree: rank 0 passed f32 %[2%], rank 1 passed i32 %[2%]")
    T.raises(function() dist.broadcast(sere.zeros(2), rank == 0 and 0 or 1) end,
      "dist.broadcast: the ranks disagree: rank 0 passed f32 %[2%] %(root 0%), rank 1 passed f32 %[2%] %(root 1%)")
    dist.barrier() -- the ranks are still in step
  end)
end

-- One batch of 4 * world images, the same on every rank (same generator);
-- rank r holds images 4r + 1 .. 4r + 4.
T.test("SyncBatchNorm: the ranks' slices reproduce one batch norm over the whole batch", function()
  local gen = sere.Generator(11)
  local x = sere.randn({4 * world, 3, 5}, {generator = gen}):mul(2):add(0.5)
  local g = sere.randn({4 * world, 3, 5}, {generator = gen})
  local function bn_run(input, upstream, sync)
    local bn = nn.BatchNorm(3)
    bn.weight:detach():copy_(sere.tensor({1.5, -0.5, 2}))
    bn.bias:detach():copy_(sere.tensor({0.1, 0.2, -0.3}))
    bn.sync = sync
    local xl = T.leaf(input)
    local y = bn(xl)
    y:backward(upstream)
    return y, xl.grad, bn
  end
  local y_all, gx_all, bn_all = bn_run(x, g, false)
  local mine = function(t) return t:narrow(1, 4 * rank + 1, 4) end
  local y, gx, bn = bn_run(mine(x), mine(g), true)
  T.close(y, mine(y_all), ATOL, RTOL, "output")
  T.close(gx, mine(gx_all), ATOL, RTOL, "input gradient")
  T.close(bn.running_mean, bn_all.running_mean, ATOL, RTOL, "running mean")
  T.close(bn.running_var, bn_all.running_var, ATOL, RTOL, "running var (unbiased over the global batch)")
  -- weight and bias gradients stay per rank; their sum over ranks is the whole batch's
  local gw, gb = bn.weight.grad:clone(), bn.bias.grad:clone()
  dist.all_reduce(gw)
  dist.all_reduce(gb)
  T.close(gw, bn_all.weight.grad, ATOL, RTOL, "weight gradient summed over ranks")
  T.close(gb, bn_all.bias.grad, ATOL, RTOL, "bias gradient summed over ranks")
  -- eval mode never synchronises: running statistics only
  bn:eval()
  T.close(bn(mine(x)), bn_all:eval()(mine(x)), ATOL, RTOL, "eval mode")
end)

T.test("sync_batchnorm sets every BatchNorm of a model; broadcast_module copies rank 0's state", function()
  local model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm(4), nn.Sequential(nn.BatchNorm(4)))
  dist.sync_batchnorm(model)
  T.eq(model["1"].sync, true, "first BatchNorm")
  T.eq(model["2"]["0"].sync, true, "nested BatchNorm")
  dist.sync_batchnorm(model, false)
  T.eq(model["1"].sync, false, "turned off again")
  sere.manual_seed(100 + rank) -- a different initialisation on every rank
  local m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm(4))
  m["1"].running_mean:add_(rank)
  sere.manual_seed(100)
  local want = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm(4))
  dist.broadcast_module(m)
  T.eq(m["0"].weight, want["0"].weight, "parameters")
  T.eq(m["1"].running_mean, want["1"].running_mean, "buffers")
end)

T.test("average_gradients: the mean over ranks in buckets; a gradient missing on some ranks counts as 0", function()
  local a = sere.zeros({3, 2}, {requires_grad = true})
  local b = sere.zeros({5}, {requires_grad = true})
  local c = sere.zeros({2}, {requires_grad = true}) -- a gradient on rank 0 only
  local d = sere.zeros({4}, {requires_grad = true}) -- no gradient anywhere
  a.grad = sere.ones(3, 2):mul(rank + 1)
  b.grad = sere.arange(5):float():mul(rank)
  if rank == 0 then c.grad = sere.full({2}, 6.0) end
  dist.average_gradients({a, b, c, d}, 16) -- a bucket of 16 bytes: several buckets
  T.eq(a.grad, sere.ones(3, 2):mul((world + 1) / 2), "a")
  T.close(b.grad, sere.arange(5):float():mul((world - 1) / 2), 1e-6, 1e-6, "b")
  T.eq(c.grad, sere.full({2}, 6.0 / world), "c: zeros where it had no gradient")
  T.eq(d.grad, nil, "d keeps no gradient")
end)

T.finish()
