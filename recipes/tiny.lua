-- tiny.lua — the quick-start job: trains a small network on CPU, on data
-- the program makes itself, in seconds, and shows it learning.
--
-- Until the SERE model and its pipeline land (issues 3-5), this recipe
-- trains a 2-hidden-layer MLP classifier on a synthetic 3-arm spiral with
-- the tensor core and autograd alone: every number below comes from
-- sere's own ops (matmul through OpenBLAS, element-wise math, reductions,
-- log-softmax, gather) and their gradients.
--
--   build/sere recipes/tiny.lua [--steps N] [--seed S] [--hidden H] [--lr LR]
local sere = require "sere"

local cfg = {steps = 400, seed = 0, hidden = 64, lr = 0.5, points = 300, classes = 3, log_every = 50}
local i = 1
while i <= #arg do
  local key = arg[i]:match("^%-%-([%w_]+)$")
  if not key or cfg[key] == nil or not tonumber(arg[i + 1]) then
    local known = {}
    for k in pairs(cfg) do known[#known + 1] = "--" .. k end
    table.sort(known)
    error(string.format("tiny.lua: bad argument '%s' (expected one of %s, each followed by a number)",
      tostring(arg[i]), table.concat(known, " ")), 0)
  end
  cfg[key] = tonumber(arg[i + 1])
  i = i + 2
end

sere.manual_seed(cfg.seed)

-- Data: `points` samples per class on the arms of a spiral with noise.
local function spiral(n, k)
  local xs, ys = {}, {}
  local noise = sere.randn(n * k, 2):mul(0.2):totable()
  for c = 0, k - 1 do
    for j = 0, n - 1 do
      local r = j / n
      local theta = c * 2 * math.pi / k + 4 * r + noise[c * n + j + 1][1] * 0.5
      xs[#xs + 1] = {r * math.cos(theta), r * math.sin(theta)}
      ys[#ys + 1] = c + 1 -- labels are 1-based class indices
    end
  end
  return sere.tensor(xs, {dtype = "f32"}), sere.tensor(ys)
end
local x, y = spiral(cfg.points, cfg.classes)
local n = x:shape()[1]

-- Model: Linear(2, H) -> ReLU -> Linear(H, H) -> ReLU -> Linear(H, classes).
local function linear(fan_in, fan_out)
  local bound = 1 / math.sqrt(fan_in)
  local w = sere.rand(fan_out, fan_in):mul(2 * bound):sub(bound)
  local b = sere.rand(fan_out):mul(2 * bound):sub(bound)
  w.requires_grad, b.requires_grad = true, true
  return {w = w, b = b}
end
local layers = {linear(2, cfg.hidden), linear(cfg.hidden, cfg.hidden), linear(cfg.hidden, cfg.classes)}

local function forward(input)
  local h = input
  for l, layer in ipairs(layers) do
    h = h:matmul(layer.w:t()) + layer.b
    if l < #layers then h = h:clamp(0, nil) end
  end
  return h
end

local function loss_and_accuracy()
  local logits = forward(x)
  local nll = -logits:log_softmax(-1):gather(2, y:view(n, 1)):mean()
  local _, pred = logits:max(2)
  local acc = pred:eq(y):float():mean():item()
  return nll, acc
end

-- SGD with momentum 0.9, cosine learning-rate decay.
local params, velocity = {}, {}
for _, layer in ipairs(layers) do
  params[#params + 1], params[#params + 2] = layer.w, layer.b
end
for k, p in ipairs(params) do velocity[k] = sere.zeros_like(p) end

print(string.format("tiny: MLP 2-%d-%d-%d on a %d-point spiral, %d steps of full-batch SGD",
  cfg.hidden, cfg.hidden, cfg.classes, n, cfg.steps))
local t0 = sere.clock()
local first_loss, loss, acc
for step = 1, cfg.steps do
  for _, p in ipairs(params) do p:zero_grad() end
  local l
  l, acc = loss_and_accuracy()
  l:backward()
  loss = l:item()
  first_loss = first_loss or loss
  if loss ~= loss then error(string.format("tiny: loss is not finite at step %d", step), 0) end
  local lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))
  sere.no_grad(function()
    for k, p in ipairs(params) do
      velocity[k]:mul_(0.9):add_(p.grad)
      p:add_(velocity[k], -lr)
    end
  end)
  if step == 1 or step % cfg.log_every == 0 or step == cfg.steps then
    print(string.format("step %4d  loss %.4f  accuracy %5.1f%%  lr %.3f  %.2fs", step, loss, acc * 100, lr,
      sere.clock() - t0))
  end
end
print(string.format("tiny: loss %.3f -> %.3f, training accuracy %.1f%% (chance %.1f%%)", first_loss, loss,
  acc * 100, 100 / cfg.classes))
if acc < 0.9 then
  io.stderr:write("tiny: the network did not learn the spiral (accuracy below 90%)\n")
  os.exit(1)
end
