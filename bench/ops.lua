-- ops.lua — times sere's main tensor ops at ViT-S/16 shapes (a batch of 128
-- images at 224 pixels: 25216 tokens of width 384, MLP width 1536) next to
-- the same ops in PyTorch on CPU, run by the same command, and prints the
-- ratio per op (torch time / sere time: above 1 means sere is faster).
--
--   build/sere bench/ops.lua [threads] [repeats]
-- Uses Debian's python3-torch through /usr/bin/python3 (bench/ops_torch.py).
-- Environment: SERE_BENCH_ONLY=substring restricts the ops.
local sere = require "sere"
local compare = dofile((arg[0]:match("(.*)/") or ".") .. "/compare.lua")

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

local ours, names = {}, {}
for _, op in ipairs(ops) do
  names[#names + 1] = op[1]
  if not only or op[1]:find(only, 1, true) then ours[op[1]] = compare.median_time(op[2], repeats) end
end
x, w1, h, h2, scores, q, qkv, xg, wg = nil
collectgarbage()

compare.print_table({
  title = string.format("sere vs PyTorch (python3-torch) on CPU, %d threads, median of %d", threads, repeats),
  column = "op", names = names, ours = ours, theirs = compare.torch_times("ops_torch.py", threads, repeats),
  reproduce = "build/sere bench/ops.lua " .. threads .. " " .. repeats,
})
