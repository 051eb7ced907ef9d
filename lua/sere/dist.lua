-- sere.dist — data-parallel training across processes (method.md section
-- 9): the rank and world queries and collectives of the C core
-- (host/dist.c: MPI on CPU tensors, NCCL on CUDA tensors) plus what a
-- training loop does with them: broadcast a model from rank 0, average
-- gradients over ranks in buckets, and synchronise a model's batch norms.
--
--   local dist = require "sere.dist"
--   -- mpirun -np 4 sere script.lua: dist.rank() is 0 .. 3, dist.world_size() 4
--   dist.all_reduce(t, "avg")                  -- in place, on every rank
--   dist.broadcast_module(model)               -- rank 0's weights everywhere
--   loss:backward(); dist.average_gradients(model:parameters())
--
-- Started without a launcher, a process is rank 0 of 1 and every
-- collective is the identity; under a launcher they run even with one
-- process (`mpirun -np 1` goes through MPI and NCCL). Ranks are 0-based (as in torch.distributed
-- and data.Loader). This module only needs the C core, so sere's own
-- init.lua may load it.
local core = require "sere.core"
local C = require "sere.dist_core"

local dist = {}
for k, v in pairs(C) do dist[k] = v end

--- dist.is_main() -> true on rank 0, the rank that prints and writes files.
function dist.is_main() return C.rank() == 0 end

--- dist.broadcast_module(module[, root = 0]): every parameter and buffer of
--- module takes rank root's values (in place; the module must be built the
--- same way on every rank).
function dist.broadcast_module(module, root)
  if not C.is_distributed() then return end
  for _, iter in ipairs({module.named_parameters, module.named_buffers}) do
    for _, t in iter(module) do C.broadcast(t, root or 0) end
  end
end

--- dist.sync_batchnorm(module[, on = true]): makes every nn.BatchNorm in
--- module a SyncBatchNorm (statistics over all ranks, 4.7), or a plain one
--- again with on = false. Returns module.
function dist.sync_batchnorm(module, on)
  for _, entry in ipairs(module:named_modules()) do
    local m = entry[2]
    if m.__name == "BatchNorm" then m.sync = on ~= false end
  end
  return module
end

local DEFAULT_BUCKET_BYTES = 25 * 2 ^ 20 -- PyTorch DDP's default bucket size

--- dist.average_gradients(params[, bucket_bytes = 25 MiB]): replaces each
--- parameter's .grad by its mean over all ranks, as data-parallel training
--- needs after backward (8.7). Gradients are flattened into buckets of
--- about bucket_bytes (one all-reduce per bucket, not per tensor), on the
--- gradients' device: CUDA buckets are built, reduced (NCCL) and copied
--- back on the GPU, queued on sere's stream without waiting. A
--- parameter with a gradient on some ranks only (a branch a rank's batch
--- did not take) counts as a zero gradient where it has none, as in the
--- gradient of the global batch; one with no gradient on any rank keeps
--- none. params: an array of tensors (e.g. model:parameters()).
function dist.average_gradients(params, bucket_bytes)
  if not C.is_distributed() or #params == 0 then return end
  bucket_bytes = bucket_bytes or DEFAULT_BUCKET_BYTES
  local flags = {}
  for i, p in ipairs(params) do flags[i] = p.grad and 1 or 0 end
  flags = C.all_reduce(core.tensor(flags, {dtype = "u8"}), "max"):totable()

  local bucket, bytes = {}, 0
  local function flush()
    if #bucket == 0 then return end
    local flat = {}
    for i, g in ipairs(bucket) do flat[i] = g:reshape(-1) end
    local buf = #flat == 1 and flat[1]:contiguous() or core.cat(flat, 1)
    C.all_reduce(buf, "avg")
    local at = 1
    for _, g in ipairs(bucket) do
      local n = g:numel()
      g:copy_(buf:narrow(1, at, n):view(g:shape()))
      at = at + n
    end
    bucket, bytes = {}, 0
  end
  for i, p in ipairs(params) do
    if flags[i] == 1 then
      if not p.grad then p.grad = core.zeros_like(p) end
      local g = p.grad
      if #bucket > 0 and (g:dtype() ~= bucket[1]:dtype() or g:device() ~= bucket[1]:device()) then flush() end
      bucket[#bucket + 1] = g
      bytes = bytes + g:numel() * (g:dtype() == "bf16" and 2 or 4)
      if bytes >= bucket_bytes then flush() end
    end
  end
  flush()
end

return dist
