-- cuda_collectives_worker.lua — one rank of tests/mpi/test_cuda_collectives.lua
-- (started there with `mpirun -np 2` and `mpirun -np 1`): the collectives
-- on CUDA tensors (NCCL where the build has it) give the values the same
-- collectives give on CPU tensors (MPI; checked against hand-worked values
-- in test_collectives.lua), for every dtype and op, and stay on the GPU.
-- Also: layouts and sizes, the cross-rank call check (a CUDA tensor on one
-- rank and a CPU tensor on another included), SyncBatchNorm on the GPU,
-- broadcast_module and average_gradients of CUDA models.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local nn = require "sere.nn"
local dist = require "sere.dist"

local rank, world = dist.rank(), dist.world_size()
local ATOL, RTOL = 1e-5, 1e-5

T.test("under a launcher, with a GPU, CUDA tensors go through NCCL", function()
  T.eq(dist.is_distributed(), true, "started by mpirun")
  assert(sere.cuda.is_available(), "a (possibly emulated) GPU")
  T.eq(dist.cuda_transport(), "nccl", "this build has NCCL (the fake over MPI in the emulator)")
end)

-- What this rank contributes: a [5, 3] tensor of small integers (halves for
-- floats), exact in every dtype and in every order of summation, drawn from
-- a generator of this rank's own.
local function contribution(dtype)
  local gen = sere.Generator(40 + rank)
  if dtype == "bool" then return sere.randint(0, 2, {5, 3}, {generator = gen}):bool() end
  if dtype == "u8" then return sere.randint(0, 100, {5, 3}, {generator = gen}):byte() end
  local v = sere.randint(-60, 60, {5, 3}, {generator = gen})
  if dtype == "f32" or dtype == "bf16" then return v:float():mul(0.5):to(dtype) end
  return v:to(dtype)
end

local SUPPORTED = {{"sum", {"f32", "bf16", "i32", "i64", "u8"}}, {"avg", {"f32", "bf16"}},
                   {"max", {"f32", "bf16", "i32", "i64", "u8", "bool"}}}
local ALL = {"f32", "bf16", "i32", "i64", "u8", "bool"}

local function on_gpu(t, what)
  T.eq(t:device(), "cuda", what .. " stays on the GPU")
  return t:cpu()
end

T.test("all_reduce: sum, avg, max for every dtype equal the CPU's, in place", function()
  for _, case in ipairs(SUPPORTED) do
    local op, dtypes = case[1], case[2]
    for _, dtype in ipairs(dtypes) do
      local want = dist.all_reduce(contribution(dtype), op)
      local t = contribution(dtype):cuda()
      assert(rawequal(dist.all_reduce(t, op), t), "all_reduce returns its argument")
      T.eq(on_gpu(t, op .. " " .. dtype), want, op .. " " .. dtype)
    end
  end
  T.eq(on_gpu(dist.all_reduce(sere.tensor(rank + 0.5, {device = "cuda"}), "max"), "0-d"):item(), world - 0.5, "0-d")
  local big = sere.full({1000000}, rank + 1.0, {device = "cuda"})
  T.eq(on_gpu(dist.all_reduce(big, "avg"), "1e6"), sere.full({1000000}, (world + 1) / 2), "1e6 elements")
end)

T.test("all_gather: every dtype equals the CPU's; any layout; 0-d", function()
  for _, dtype in ipairs(ALL) do
    T.eq(on_gpu(dist.all_gather(contribution(dtype):cuda()), dtype), dist.all_gather(contribution(dtype)),
      "all_gather " .. dtype)
  end
  local t = sere.arange(6):reshape(2, 3):add(10 * rank):transpose(1, 2) -- [3, 2], not contiguous
  T.eq(on_gpu(dist.all_gather(t:cuda():transpose(1, 2):transpose(1, 2)), "strided"), dist.all_gather(t), "strided")
  T.eq(on_gpu(dist.all_gather(sere.tensor(rank, {device = "cuda"})), "0-d"), sere.arange(world), "0-d into [world]")
end)

T.test("broadcast: from every root, every dtype, equals the CPU's, in place", function()
  for root = 0, world - 1 do
    for _, dtype in ipairs(ALL) do
      local t = contribution(dtype):cuda()
      assert(rawequal(dist.broadcast(t, root), t), "broadcast returns its argument")
      T.eq(on_gpu(t, dtype), dist.broadcast(contribution(dtype), root), "broadcast " .. dtype .. " from " .. root)
    end
  end
end)

T.test("the argument errors are the CPU's", function()
  T.raises(function() dist.all_reduce(sere.tensor({1, 2}, {device = "cuda"}), "avg") end,
    'dist.all_reduce: "avg" needs a float tensor %(f32 or bf16%), got i64 of shape %[2%]')
  T.raises(function() dist.all_reduce(sere.zeros({3, 2}, {device = "cuda"}):transpose(1, 2)) end,
    "dist.all_reduce: works in place on a contiguous tensor; got a non%-contiguous f32 tensor of shape %[2, 3%]")
  T.raises(function() dist.broadcast(sere.zeros({2}, {device = "cuda"}), world) end,
    "dist.broadcast: root " .. world .. " is not a rank of this world of " .. world)
end)

if world > 1 then
  T.test("a call that differs between ranks fails on every rank, naming both; devices count", function()
    local n = rank == 0 and 4 or 3
    T.raises(function() dist.all_reduce(sere.zeros({n}, {device = "cuda"}), "sum") end,
      'dist.all_reduce: the ranks disagree: rank 0 passed f32 %[4%] on cuda %("sum"%), '
      .. 'rank 1 passed f32 %[3%] on cuda %("sum"%)')
    T.raises(function() dist.all_reduce(sere.zeros({4}, {device = rank == 0 and "cuda" or "cpu"})) end,
      'rank 0 passed f32 %[4%] on cuda %("sum"%), rank 1 passed f32 %[4%] %("sum"%)')
    T.raises(function() dist.broadcast(sere.zeros({2}, {device = "cuda"}), rank == 0 and 0 or 1) end,
      "dist.broadcast: the ranks disagree: rank 0 passed f32 %[2%] on cuda %(root 0%), rank 1 passed f32 %[2%] "
      .. "on cuda %(root 1%)")
    T.raises(function() dist.all_gather(sere.zeros({2}, {device = "cuda", dtype = rank == 0 and "f32" or "i32"})) end,
      "dist.all_gather: the ranks disagree: rank 0 passed f32 %[2%] on cuda, rank 1 passed i32 %[2%] on cuda")
    dist.barrier()
    -- still in step, NCCL included
    T.eq(on_gpu(dist.all_reduce(sere.ones({2}, {device = "cuda"})), "after"), sere.full({2}, world), "NCCL still works")
  end)
end

-- One batch of 4 * world images, the same on every rank; rank r holds
-- images 4r + 1 .. 4r + 4 on the GPU, the reference is the whole batch on
-- the CPU.
T.test("SyncBatchNorm on the GPU: the ranks' slices reproduce one batch norm over the whole batch", function()
  local gen = sere.Generator(11)
  local x = sere.randn({4 * world, 3, 5}, {generator = gen}):mul(2):add(0.5)
  local g = sere.randn({4 * world, 3, 5}, {generator = gen})
  local function bn_run(input, upstream, sync, device)
    local bn = nn.BatchNorm(3)
    bn.weight:detach():copy_(sere.tensor({1.5, -0.5, 2}))
    bn.bias:detach():copy_(sere.tensor({0.1, 0.2, -0.3}))
    bn.sync = sync
    bn:to(device)
    local xl = T.leaf(input:to(device))
    local y = bn(xl)
    y:backward(upstream:to(device))
    return y, xl.grad, bn
  end
  local y_all, gx_all, bn_all = bn_run(x, g, false, "cpu")
  local mine = function(t) return t:narrow(1, 4 * rank + 1, 4) end
  local y, gx, bn = bn_run(mine(x), mine(g), true, "cuda")
  T.close(on_gpu(y, "output"), mine(y_all), ATOL, RTOL, "output")
  T.close(gx:cpu(), mine(gx_all), ATOL, RTOL, "input gradient")
  T.close(on_gpu(bn.running_mean, "running mean"), bn_all.running_mean, ATOL, RTOL, "running mean")
  T.close(bn.running_var:cpu(), bn_all.running_var, ATOL, RTOL, "running var")
  T.close(dist.all_reduce(bn.weight.grad:clone()):cpu(), bn_all.weight.grad, ATOL, RTOL, "weight gradient summed")
end)

T.test("broadcast_module and average_gradients on a CUDA model (several buckets)", function()
  sere.manual_seed(100 + rank) -- a different initialisation on every rank
  local m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm(4)):to("cuda")
  sere.manual_seed(100)
  local want = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm(4))
  dist.broadcast_module(m)
  T.eq(on_gpu(m["0"].weight, "weight"), want["0"].weight, "parameters")
  T.eq(m["1"].running_var:cpu(), want["1"].running_var, "buffers")

  local a = sere.zeros({3, 2}, {requires_grad = true, device = "cuda"})
  local b = sere.zeros({5}, {requires_grad = true, device = "cuda"})
  local c = sere.zeros({2}, {requires_grad = true, device = "cuda"}) -- a gradient on rank 0 only
  local d = sere.zeros({4}, {requires_grad = true, device = "cuda"}) -- none anywhere
  local e = sere.zeros({2}, {requires_grad = true})                  -- a CPU parameter among them
  a.grad = sere.ones(3, 2):mul(rank + 1):cuda()
  b.grad = sere.arange(5):float():mul(rank):cuda()
  if rank == 0 then c.grad = sere.full({2}, 6.0, {device = "cuda"}) end
  e.grad = sere.full({2}, rank + 1.0)
  dist.average_gradients({a, b, c, d, e}, 16)
  T.eq(on_gpu(a.grad, "a"), sere.ones(3, 2):mul((world + 1) / 2), "a")
  T.close(on_gpu(b.grad, "b"), sere.arange(5):float():mul((world - 1) / 2), 1e-6, 1e-6, "b")
  T.eq(on_gpu(c.grad, "c"), sere.full({2}, 6.0 / world), "c: zeros where it had no gradient")
  T.eq(d.grad, nil, "d keeps no gradient")
  T.eq(e.grad, sere.full({2}, (world + 1) / 2), "e, on the CPU")
  dist.average_gradients({a, b, c}) -- one bucket of 25 MiB
  T.eq(a.grad:cpu(), sere.ones(3, 2):mul((world + 1) / 2), "averaging equal gradients changes nothing")
end)

T.finish()
