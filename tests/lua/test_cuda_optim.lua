-- test_cuda_optim.lua — the fused optimiser ops on the GPU against the CPU:
-- AdamW, EMA, norms and scaling over lists long and large enough to need
-- several multi-tensor launches (more tensors than one launch's slots,
-- tensors spanning many chunks, empty and one-element tensors), then a
-- whole optim.update (clipping, frozen last layer, AdamW, EMA) on a small
-- model on both devices.
local sere = require "sere"
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local nn = require "sere.nn"
local optim = require "sere.optim"

local function check(name, fn) P.test(T, "cuda optim: " .. name, fn) end

-- Shapes: 30 small tensors (more than the 24 slots of one launch), one of
-- 700k elements (22 chunks), an empty one and a single element.
local SHAPES = {{700001}, {0}, {1}}
for i = 1, 30 do SHAPES[#SHAPES + 1] = {i, 33} end

local function lists(n_lists, scale)
  local out = {}
  for k = 1, n_lists do
    out[k] = {}
    for i, s in ipairs(SHAPES) do out[k][i] = P.randn(s) * (scale and scale[k] or 1) end
  end
  return out
end

local function to_cuda(list)
  local out = {}
  for i, t in ipairs(list) do out[i] = t:cuda() end
  return out
end

local function same(what, gpu, cpu, tol)
  for i = 1, #cpu do
    if cpu[i]:numel() > 0 then
      local err = (gpu[i]:cpu() - cpu[i]):abs():max():item() / math.max(cpu[i]:abs():max():item(), 1e-6)
      if err > tol then error(string.format("%s tensor %d: normalised error %.3g", what, i, err)) end
    end
  end
end

check("adamw_step_", function()
  local cpu = lists(4, {1, 1, 0.1, 0.01})
  for i = 1, #SHAPES do cpu[4][i] = cpu[4][i]:abs() end
  local gpu = {to_cuda(cpu[1]), to_cuda(cpu[2]), to_cuda(cpu[3]), to_cuda(cpu[4])}
  local steps = {}
  for i = 1, #SHAPES do steps[i] = i end
  local h = {lr = 3e-4, weight_decay = 0.05, beta1 = 0.9, beta2 = 0.999, eps = 1e-8}
  sere.adamw_step_(cpu[1], cpu[2], cpu[3], cpu[4], steps, h)
  sere.adamw_step_(gpu[1], gpu[2], gpu[3], gpu[4], steps, h)
  same("param", gpu[1], cpu[1], 1e-6)
  same("exp_avg", gpu[3], cpu[3], 1e-6)
  same("exp_avg_sq", gpu[4], cpu[4], 1e-6)
end)

check("ema_, norms, scale_", function()
  local cpu = lists(2)
  local gpu = {to_cuda(cpu[1]), to_cuda(cpu[2])}
  sere.ema_(cpu[1], cpu[2], 0.9995)
  sere.ema_(gpu[1], gpu[2], 0.9995)
  same("ema", gpu[1], cpu[1], 1e-6)
  local nc, ng = sere.norms(cpu[2]), sere.norms(gpu[2])
  for i = 1, #SHAPES do T.close(ng[i], nc[i], 1e-12, 1e-9, "norm " .. i) end
  local f = {}
  for i = 1, #SHAPES do f[i] = 1 / i end
  sere.scale_(cpu[2], f)
  sere.scale_(gpu[2], f)
  same("scale", gpu[2], cpu[2], 0)
  T.raises(function() sere.ema_({gpu[1][1]}, {cpu[2][1]}, 0.9) end, "one device")
end)

check("optim.update on a model, cpu vs cuda", function()
  local function model(seed)
    sere.manual_seed(seed)
    local m = nn.Sequential(nn.Linear(33, 64), nn.GELU(), nn.Linear(64, 7))
    return m
  end
  local results = {}
  local input = P.randn({5, 33})
  for _, dev in ipairs({"cpu", "cuda"}) do
    local student, teacher = model(1), model(1)
    if dev == "cuda" then student:to("cuda"); teacher:to("cuda") end
    local opt = optim.AdamW(optim.param_groups(student))
    local ema = optim.EMA(student, teacher)
    opt:set_lr_wd(1e-2, 0.04)
    local x = input:to(dev)
    for _ = 1, 3 do
      student:forward(x):square():sum():backward()
      optim.update{optimizer = opt, student = student, ema = ema, momentum = 0.99, clip_grad = 0.3}
    end
    results[dev] = teacher:state_dict()
  end
  for name, t in pairs(results.cpu) do
    T.close(results.cuda[name]:cpu(), t, 1e-6, 1e-5, name)
  end
end)

T.finish()
