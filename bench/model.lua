-- model.lua — forward and forward+backward of the ViT-S/16 backbone at
-- batch 8 for 224 and 96 pixel crops on CPU, next to the same model in
-- PyTorch (bench/model_torch.py, using our PyTorch twin in
-- tests/reference/sere_ref.py), run by the same command. Prints the ratio
-- torch time / sere time (above 1: sere is faster).
--
--   build/sere bench/model.lua [threads] [repeats] [batch]
local sere = require "sere"
local compare = dofile((arg[0]:match("(.*)/") or ".") .. "/compare.lua")
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
    order[#order + 1], ours[name] = name, compare.median_time(run, repeats)
  end
end

compare.print_table({
  title = string.format("sere vs PyTorch (python3-torch) on CPU, %d threads, median of %d", threads, repeats),
  column = "case", names = order, ours = ours, theirs = compare.torch_times("model_torch.py", threads, repeats, batch),
  reproduce = string.format("build/sere bench/model.lua %d %d %d", threads, repeats, batch),
})
