-- train_worker.lua — one rank of the distributed runs of
-- tests/mpi/test_train.lua (started there with mpirun):
--   sere tests/mpi/train_worker.lua OUT DATA MODE [ACCUM_ITER [DEVICE]]
-- MODE "train": trains with the flags of train_setup.lua and writes
-- OUT/rank<r>.safetensors (train_setup.save_result). MODE "nan": the loss
-- of rank 1 turns NaN at iteration 1, which must stop every rank. DEVICE:
-- the --device flag (default cpu).
local sere = require "sere"
local dist = require "sere.dist"
local train = require "sere.train"
local S = dofile("tests/mpi/train_setup.lua")

local out, data, mode, accum, device = ...
local a = S.config(out, data, dist.world_size(), {accum_iter = tonumber(accum or "1"), device = device or "cpu"})
local R = S.R
if mode == "nan" then
  local objective, calls = R.objective, 0
  R.objective = function(...)
    local total, terms = objective(...)
    calls = calls + 1
    if dist.rank() == 1 and calls == 2 then total = total * (0 / 0) end
    return total, terms
  end
end
local res = train.run(a, R)
S.save_result(string.format("%s/rank%d.safetensors", out, dist.rank()), res)
