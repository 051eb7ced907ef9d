-- test_cuda_collectives.lua — sere.dist on CUDA tensors across processes:
-- runs tests/mpi/cuda_collectives_worker.lua under `mpirun -np 2` and
-- `mpirun -np 1` (one rank still goes through MPI and NCCL) and requires
-- every rank to pass. In the emulator build (-DSERE_CUDA=EMULATE) NCCL is
-- the fake over MPI of kernels/emulator/nccl.cpp, so this runs without a
-- GPU; a build with no CUDA device reports itself skipped (77).
--   sere tests/mpi/test_cuda_collectives.lua "MPIRUN [FLAGS]" path/to/sere   (ctest: mpi.cuda_collectives)
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"

local mpirun, sere_bin = arg[1], arg[2]
assert(mpirun and sere_bin, "usage: sere tests/mpi/test_cuda_collectives.lua 'MPIRUN [FLAGS]' SERE")

-- Runs `sere ARGS` on np ranks; returns ok, the output, the seconds it took.
local function run_ranks(np, args)
  local log, t0 = os.tmpname(), sere.clock()
  local ok = os.execute(string.format("OMP_NUM_THREADS=1 timeout -k 5 300 %s -np %d %s %s > %s 2>&1", mpirun, np,
    sere_bin, args, log))
  local out = T.read_file(log)
  os.remove(log)
  return ok, out, sere.clock() - t0
end

if not sere.cuda.is_available() then
  T.skip("collectives on CUDA tensors", "no CUDA device (build with -DSERE_CUDA=EMULATE to run it without a GPU)")
else
  for _, np in ipairs({2, 1}) do
    T.test("mpirun -np " .. np .. ": CUDA collectives equal the CPU's on every rank", function()
      local ok, out = run_ranks(np, "tests/mpi/cuda_collectives_worker.lua")
      assert(ok, "a rank failed:\n" .. out)
      local _, finished = out:gsub("%d+ passed, 0 failed, 0 skipped", "")
      T.eq(finished, np, "every rank finished with no failure:\n" .. out)
    end)
  end

  T.test("an error on rank 1 aborts its NCCL communicator and stops rank 0 waiting in a CUDA all_reduce", function()
    local ok, out, secs = run_ranks(2, [[-e 'local sere = require "sere"; local dist = require "sere.dist"
      local t = dist.all_reduce(sere.ones({4}, {device = "cuda"}))
      if dist.rank() == 1 then error("broken on purpose") end
      dist.all_reduce(t); print("rank 0 went on")']])
    assert(not ok, "the job must fail:\n" .. out)
    for _, want in ipairs({"sere %(rank 1 of 2%): %(command line%):3: broken on purpose",
                           "sere %(rank 1 of 2%): aborting the NCCL communicator",
                           "sere %(rank 1 of 2%): exit status 1: stopping every rank"}) do
      assert(out:find(want), "the output lacks /" .. want .. "/:\n" .. out)
    end
    assert(not out:find("rank 0 went on"), "rank 0 must not get past the all_reduce")
    assert(secs < 60, "stopped promptly")
  end)
end

T.finish()
