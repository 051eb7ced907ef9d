-- ops.lua — times sere's main tensor ops at ViT-S/16 shapes (a batch of 128
-- images at 224 pixels: 25216 tokens of width 384, MLP width 1536) next to
-- the same ops in PyTorch on CPU, run by the same command, and prints the
-- ratio per op (torch time / sere time: above 1 means sere is faster).
--
--   build/sere bench/ops.lua [threads] [repeats]
-- Uses Debian's python3-torch through /usr/bin/python3 (bench/ops_torch.py).
-- Environment: SERE_BENCH_ONLY=substring restricts the ops.
local sere = require "sere"

local threads = tonumber(arg[1]) or tonumber(io.popen("nproc"):read("l")) or 1
local repeats = tonumber(arg[2]) or 5
local only = os.getenv("SERE_BENCH_ONLY")

sere.manual_seed(0)
local T, D, H = 128 * 197, 384, 1536
local x = sere.randn(T, D)
local w1 = sere.randn(H, D)
local h, h2 = sere.randn(T, H), sere.randn(T, H)
local bias = sere.randn(H)
local col = sere.randn(T, 1)
local scores = sere.randn(16 * 6, 197, 197)
local q = sere.randn(16 * 6, 197, 64)
local qkv = sere.randn(128, 197, 3, 6, 64)
local idx = sere.randint(1, T + 1, {T // 2})
local xg = sere.randn({T, D}, {requires_grad = true})
local wg = sere.randn({H, D}, {requires_grad = true})

local ops = {
  {"matmul [25216,384]x[384,1536]", function() return x:matmul(w1:t()) end},
  {"matmul [25216,1536]x[1536,384]", function() return h:matmul(w1) end},
  {"bmm [96,197,64]x[96,64,197]", function() return q:bmm(q:transpose(2, 3)) end},
  {"linear fwd+bwd [25216,384]->1536", function()
    xg.grad, wg.grad = nil, nil
    xg:matmul(wg:t()):backward(h)
  end},
  {"add [25216,1536]+[1536]", function() return h + bias end},
  {"mul [25216,1536]*[25216,1536]", function() return h * h2 end},
  {"mul [25216,1536]*[25216,1]", function() return h * col end},
  {"exp [25216,1536]", function() return h:exp() end},
  {"tanh [25216,1536]", function() return h:tanh() end},
  {"sum(-1) [25216,1536]", function() return h:sum(-1) end},
  {"sum(1) [25216,1536]", function() return h:sum(1) end},
  {"mean [25216,1536]", function() return h:mean() end},
  {"softmax(-1) [96,197,197]", function() return scores:softmax(-1) end},
  {"permute+contiguous qkv", function() return qkv:permute(3, 1, 4, 2, 5):contiguous() end},
  {"cat dim1 2x[25216,384]", function() return sere.cat({x, x}, 2) end},
  {"index_select [12608] rows", function() return x:index_select(1, idx) end},
  {"randn [25216,1536]", function() return sere.randn(T, H) end},
}

local function median_time(fn)
  fn()
  local times = {}
  for i = 1, repeats do
    local t0 = sere.clock()
    fn()
    times[i] = sere.clock() - t0
  end
  table.sort(times)
  return times[(#times + 1) // 2]
end

local ours = {}
for _, op in ipairs(ops) do
  if not only or op[1]:find(only, 1, true) then ours[op[1]] = median_time(op[2]) end
end
x, w1, h, h2, scores, q, qkv, xg, wg = nil
collectgarbage()

local theirs = {}
local cmd = string.format("/usr/bin/python3 %s/ops_torch.py %d %d", arg[0]:match("(.*)/") or ".", threads, repeats)
local p = io.popen(cmd)
for line in p:lines() do
  local name, secs = line:match("^(.-)\t([%d%.e%-]+)$")
  if name then theirs[name] = tonumber(secs) end
end
p:close()

print(string.format("sere vs PyTorch %s on CPU, %d threads, median of %d (ms)", "(python3-torch)", threads, repeats))
print(string.format("%-36s %10s %10s %8s", "op", "sere", "torch", "torch/sere"))
for _, op in ipairs(ops) do
  local a, b = ours[op[1]], theirs[op[1]]
  if a then
    print(string.format("%-36s %10.2f %10s %8s", op[1], a * 1e3, b and string.format("%.2f", b * 1e3) or "n/a",
      b and string.format("%.2f", b / a) or "n/a"))
  end
end
print("reproduce: build/sere bench/ops.lua " .. threads .. " " .. repeats)
