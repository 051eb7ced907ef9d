-- test_train.lua — data-parallel training equals single-process training:
-- `mpirun -np 2` of a tiny recipes/vit_small.lua run with batch B per rank
-- against one process with batch 2B on the same data and seed, for 4
-- iterations (and again with gradient accumulation over 2 iterations):
-- the losses, every student and teacher tensor (SyncBatchNorm running
-- statistics included) and the centres agree; both ranks end with
-- identical state; only rank 0 writes the log and checkpoint. `mpirun -np
-- 1` (MPI, and NCCL on a GPU, with one rank) gives exactly the run without
-- a launcher. Also: the loader's shards of a global batch are exactly the
-- single process's batch, and a non-finite loss on rank 1 alone stops both
-- ranks with a message naming rank 1.
-- With "cuda" as third argument every run trains with --device cuda: the
-- gradients are averaged over NCCL (the fake over MPI in the emulator
-- build, -DSERE_CUDA=EMULATE), and a build without a CUDA device reports
-- itself skipped.
--   sere tests/mpi/test_train.lua "MPIRUN [FLAGS]" path/to/sere [cuda]   (ctest: mpi.train, mpi.cuda_train)
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local data = require "sere.data"
local train = require "sere.train"
local S = dofile("tests/mpi/train_setup.lua")

local mpirun, sere_bin, device = arg[1], arg[2], arg[3] or "cpu"
assert(mpirun and sere_bin and (device == "cpu" or device == "cuda"),
  "usage: sere tests/mpi/test_train.lua 'MPIRUN [FLAGS]' SERE [cuda]")
if device == "cuda" and not sere.cuda.is_available() then
  T.skip("data-parallel training on CUDA", "no CUDA device (build with -DSERE_CUDA=EMULATE to run it without a GPU)")
  T.finish()
end

-- The two runs differ only in float summation order: batch sums of B + B
-- against 2B rows, the mean of two per-rank gradient means against one
-- mean, BN statistics summed per rank then across ranks. Measured after 4
-- AdamW steps (peak lr 1.6e-3): at most 1.3e-7 on weights of size up to ~1
-- and 1.9e-6 on losses of ~12; the tolerance leaves about 40x room and
-- still catches a real difference (a wrong gradient scale, an
-- unsynchronised BatchNorm or centre moves values by 1e-4 or more).
local ATOL, RTOL = 5e-6, 5e-6
-- One exception. The key bias of an attention layer (the middle third of
-- qkv.bias) adds q.b_k to every logit of a query, which the softmax
-- cancels: its gradient is 0 in exact arithmetic and rounding noise
-- (~1e-9) in practice, and AdamW divides that noise by its own running
-- size, so each run moves it by up to lr per step in a direction of its
-- own. It cannot change any output; what both runs must show is that it
-- stayed within sum(lr) of 0 (it starts at 0).
local function key_bias(t)
  local d = t:numel() // 3
  return t:narrow(1, d + 1, d)
end
local function split_qkv(t)
  local d = t:numel() // 3
  return sere.cat({t:narrow(1, 1, d), t:narrow(1, 2 * d + 1, d)}, 1)
end

local base = os.tmpname()
os.remove(base)
local root = base .. "_data"
S.make_data(root)

local function sh(cmd) return os.execute(cmd) end

-- Runs np ranks (2 unless given); returns ok, the captured output.
local function mpi_run(out, mode, accum, np)
  assert(sh("mkdir -p " .. out))
  local log = out .. "/mpirun.log"
  local ok = sh(string.format("OMP_NUM_THREADS=1 timeout -k 5 300 %s -np %d %s tests/mpi/train_worker.lua %s %s %s %d "
    .. "%s > %s 2>&1", mpirun, np or 2, sere_bin, out, root, mode, accum, device, log))
  return ok, T.read_file(log)
end

local function single_run(out, accum)
  local lines, real_print = {}, print
  print = function(...) lines[#lines + 1] = table.concat({...}, "\t") end
  local ok, res = pcall(train.run, S.config(out, root, 1, {accum_iter = accum, device = device}), S.R)
  print = real_print
  if not ok then error(res, 0) end
  S.save_result(out .. "/single.safetensors", res)
  return res
end

if device == "cpu" then T.test("the ranks' shards of each global batch are the single process's batch", function()
  local function loader(rank, world)
    return data.Loader({dataset = root, batch_size = S.GLOBAL_BATCH // world, seed = 5, rank = rank,
      world_size = world, threads = 1})
  end
  local one, r0, r1 = loader(0, 1), loader(0, 2), loader(1, 2)
  for epoch = 0, 1 do
    local all, a, b = one:indices(epoch), r0:indices(epoch), r1:indices(epoch)
    for k = 0, S.IMAGES // S.GLOBAL_BATCH - 1 do
      local want, got = {}, {}
      for j = 1, S.GLOBAL_BATCH do want[#want + 1] = all[k * S.GLOBAL_BATCH + j] end
      for j = 1, S.GLOBAL_BATCH // 2 do
        got[#got + 1] = a[k * S.GLOBAL_BATCH // 2 + j]
        got[#got + 1] = b[k * S.GLOBAL_BATCH // 2 + j]
      end
      table.sort(want)
      table.sort(got)
      T.eq(table.concat(got, ","), table.concat(want, ","), "epoch " .. epoch .. " batch " .. k)
    end
  end
  one:close() r0:close() r1:close()
end) end

local function check_equal_runs(accum)
  local single_out, dist_out = string.format("%s_single%d", base, accum), string.format("%s_dist%d", base, accum)
  single_run(single_out, accum)
  local ok, log = mpi_run(dist_out, "train", accum)
  assert(ok, "mpirun failed:\n" .. log)
  local want = sere.io.load(single_out .. "/single.safetensors")
  local r0, r1 = sere.io.load(dist_out .. "/rank0.safetensors"), sere.io.load(dist_out .. "/rank1.safetensors")
  T.eq(want.losses:numel(), 4, "4 iterations")
  local lr = S.R.schedules(S.config("", root, 1, {accum_iter = accum}), S.IMAGES // S.GLOBAL_BATCH, 1).lr
  local lr_sum = 0
  for _, v in ipairs(lr) do lr_sum = lr_sum + v end
  local n = 0
  for name, t in pairs(want) do
    local got = assert(r0[name], "rank 0 has " .. name)
    T.eq(r1[name], got, name .. ": rank 1 = rank 0")
    if name:find("attn%.qkv%.bias$") then
      T.close(split_qkv(got), split_qkv(t), ATOL, RTOL, name .. " (query and value parts)")
      for _, k in ipairs({key_bias(got), key_bias(t)}) do
        assert(k:abs():max():item() <= lr_sum, name .. ": the key bias stays within sum(lr) of 0")
      end
    else
      T.close(got, t, ATOL, RTOL, name .. " (2 ranks of B vs 1 process of 2B)")
    end
    n = n + 1
  end
  assert(want["state.center"]:abs():sum():item() > 0, "the centres moved")
  assert(want["student.backbone.pixel_sere.projection.0.running_var"], "SyncBatchNorm buffers are compared")
  -- rank 0 alone printed and wrote the log and the checkpoint
  local _, progress = log:gsub("%[%d/4%] epoch", "")
  T.eq(progress, 4, "one progress line per iteration, from rank 0 only:\n" .. log)
  assert(log:find("(2 ranks of 4)", 1, true), "the start line names the ranks:\n" .. log)
  local ckpt = sere.io.load(dist_out .. "/checkpoint.safetensors")
  T.close(ckpt["ibot_loss.center"], want["state.center"], ATOL, RTOL, "checkpointed centre")
  local _, records = T.read_file(dist_out .. "/log.txt"):gsub("\n", "")
  T.eq(records, 4 + 2, "one log record per iteration and per epoch, written once")
  return n
end

T.test("mpirun -np 2 with batch B equals one process with batch 2B", function()
  assert(check_equal_runs(1) > 50, "every tensor compared")
end)

T.test("the same with gradient accumulation over 2 iterations (centres from the group)", function()
  check_equal_runs(2)
end)

T.test("mpirun -np 1 equals the run without a launcher exactly", function()
  local single_out, dist_out = base .. "_single1", base .. "_np1"
  local want = sere.io.load(single_out .. "/single.safetensors") -- the first test's
  local ok, log = mpi_run(dist_out, "train", 1, 1)
  assert(ok, "mpirun failed:\n" .. log)
  local got = sere.io.load(dist_out .. "/rank0.safetensors")
  local n = 0
  for name, t in pairs(want) do
    T.eq(got[name], t, name)
    n = n + 1
  end
  assert(n > 50, "every tensor compared")
end)

T.test("a non-finite loss on rank 1 only stops both ranks, naming rank 1", function()
  local t0 = sere.clock()
  local ok, log = mpi_run(base .. "_nan", "nan", 1)
  assert(not ok, "the job must fail:\n" .. log)
  assert(log:find("non%-finite loss at step 1 %(epoch 0%) on rank 1:"), log)
  assert(sere.clock() - t0 < 60, "stopped promptly")
end)

sh(string.format("rm -rf %s_data %s_single1 %s_dist1 %s_single2 %s_dist2 %s_np1 %s_nan", base, base, base, base, base,
  base, base))
T.finish()
