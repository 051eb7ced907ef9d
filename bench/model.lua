-- model.lua — forward and forward+backward of the ViT-S/16 backbone at
-- batch 8 for 224 and 96 pixel crops on CPU, next to the same model in
-- PyTorch (bench/model_torch.py, using our PyTorch twin in
-- tests/reference/sere_ref.py), run by the same command. Prints the ratio
-- torch time / sere time (above 1: sere is faster).
--
--   build/sere bench/model.lua [threads] [repeats] [batch]
local sere = require "sere"
local nn = require "sere.nn"

local threads = tonumber(arg[1]) or tonumber(io.popen("nproc"):read("l")) or 1
local repeats = tonumber(arg[2]) or 3
local batch = tonumber(arg[3]) or 8

sere.manual_seed(0)
local vit = nn.vit_small({patch_size = 16, sere_heads = false})

local function case(size, backward)
  local x = sere.randn(batch, 3, size, size)
  local up
  return function()
    local tokens = vit(x, {sere = false}).tokens
    if backward then
      up = up or sere.randn(tokens:shape())
      vit:zero_grad()
      tokens:backward(up)
    end
  end
end

local order, ours = {}, {}
for _, size in ipairs({224, 96}) do
  for _, backward in ipairs({false, true}) do
    local name = string.format("vit_small %s %dx3x%dx%d", backward and "fwd+bwd" or "fwd", batch, size, size)
    local fn = case(size, backward)
    local run = backward and function() fn() end or function() sere.no_grad(fn) end
    run()
    local times = {}
    for i = 1, repeats do
      local t0 = sere.clock()
      run()
      times[i] = sere.clock() - t0
    end
    table.sort(times)
    order[#order + 1], ours[name] = name, times[(#times + 1) // 2]
  end
end

local theirs = {}
local dir = arg[0]:match("(.*)/") or "."
local p = io.popen(string.format("/usr/bin/python3 %s/model_torch.py %d %d %d", dir, threads, repeats, batch))
for line in p:lines() do
  local name, secs = line:match("^(.-)\t([%d%.e%-]+)$")
  if name then theirs[name] = tonumber(secs) end
end
p:close()

print(string.format("sere vs PyTorch (python3-torch) on CPU, %d threads, median of %d (ms)", threads, repeats))
print(string.format("%-34s %10s %10s %10s", "case", "sere", "torch", "torch/sere"))
for _, name in ipairs(order) do
  local a, b = ours[name], theirs[name]
  print(string.format("%-34s %10.1f %10s %10s", name, a * 1e3, b and string.format("%.1f", b * 1e3) or "n/a",
    b and string.format("%.2f", b / a) or "n/a"))
end
print(string.format("reproduce: build/sere bench/model.lua %d %d %d", threads, repeats, batch))
