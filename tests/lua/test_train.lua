-- test_train.lua — sere.train with the recipe pieces of
-- recipes/vit_small.lua at tiny sizes: a few iterations (finite losses, the
-- progress line, the JSON-lines log, the checkpoint and its contents,
-- numbered copies), exact resume (a run stopped mid-epoch by
-- --stop_after_iters and resumed gives bit-identical losses and weights to
-- an uninterrupted one), gradient accumulation, the non-finite-loss stop,
-- and the weighted k-NN classifier on hand-made features whose answer is
-- worked out by hand.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local args = require "sere.args"
local recipe = require "sere.recipe"
local train = require "sere.train"
local eval = require "sere.eval"

local base = os.tmpname()
os.remove(base)
local function sh(cmd) assert(os.execute(cmd), cmd) end

-- 12 random 24x24 images in 2 classes: 3 iterations of 4 per epoch
local root = base .. "_data"
local gen = sere.Generator(3)
for c = 1, 2 do
  sh(string.format("mkdir -p %s/class%d", root, c))
  for n = 1, 6 do
    sere.image.save_png(string.format("%s/class%d/%d.png", root, c, n),
      sere.rand({24, 24, 3}, {generator = gen}):mul(255):byte())
  end
end

local R = recipe.load("recipes/vit_small.lua")

-- The flags of recipes/vit_small.lua with tiny sizes.
local function config(out, extra)
  local a = assert(args.try_parse({}, recipe.flags(R.defaults)))
  local tiny = {
    output_dir = out, data_path = root, seed = 5, num_workers = 2, print_freq = 1,
    embed_dim = 16, depth = 1, num_heads = 2, patch_size = 8, drop_path = 0.1,
    out_dim = 32, patch_out_dim = 32, head_hidden_dim = 32, bottleneck_dim = 16, norm_last_layer = true,
    global_size = 16, local_crops_number = 2, local_crops_scale = {0.1, 0.4}, local_size = 8,
    overlap_size = {3, 3}, lg_size = 2, epochs = 2, batch_size_per_gpu = 4, lr = 0.05, min_lr = 1e-5,
    warmup_epochs = 1, momentum_teacher = 0.99, clip_grad = 3.0, teacher_temp = 0.07,
    warmup_teacher_temp_epochs = 1, use_fp16 = false, saveckp_freq = 1,
  }
  for k, v in pairs(tiny) do a[k] = v end
  for k, v in pairs(extra or {}) do a[k] = v end
  return a
end

-- Runs train.run collecting what it prints.
local function run_quiet(a)
  local lines, real_print = {}, print
  print = function(...) lines[#lines + 1] = table.concat({...}, "\t") end
  local ok, res = pcall(train.run, a, R)
  print = real_print
  if not ok then error(res, 0) end
  return res, lines
end

local read = T.read_file
local exists = sere.io.exists

local full, full_lines = run_quiet(config(base .. "_full"))

T.test("a short run: finite losses, progress lines, JSON log, checkpoints", function()
  T.eq(#full.losses, 6, "2 epochs of 3 iterations")
  for it, l in ipairs(full.losses) do assert(l == l and math.abs(l) < math.huge, "loss " .. it .. " is finite") end
  local progress = 0
  for _, line in ipairs(full_lines) do
    if line:find("^%[%d+/6%] epoch %d/2  eta %d+:%d%d:%d%d  [%d.]+ img/s  cls [%d.]+  patch [%d.]+  pixel [%d.]+  "
      .. "channel [%d.]+  total [%d.]+  acc [%d.]+  lr [%d.e-]+  wd [%d.e-]+$") then
      progress = progress + 1
    end
  end
  T.eq(progress, 6, "one progress line per iteration (print_freq 1):\n" .. table.concat(full_lines, "\n"))
  local log = read(base .. "_full/log.txt")
  local _, records = log:gsub('{"acc": [^\n]*"step": %d[^\n]*}\n', "")
  local _, epochs = log:gsub('{"epoch": %d, "train_acc": [^\n]*"train_total": [^\n]*}\n', "")
  T.eq(records, 6, "interval records")
  T.eq(epochs, 2, "epoch records")
  local t, meta = sere.io.load(base .. "_full/checkpoint.safetensors")
  T.eq(meta.epoch, "2", "next epoch")
  T.eq(meta.iteration, "6", "iteration")
  assert(meta.args:find('"batch_size_per_gpu": 4', 1, true), "flags saved as JSON")
  assert(t["student.module.backbone.masked_embed"], "student weights")
  assert(t["teacher.module.head.last_layer.weight_v"], "teacher weights")
  assert(t["teacher.module.backbone.masked_embed"] == nil, "the teacher has no mask embedding")
  assert(t["optimizer.backbone.cls_token.exp_avg"], "optimizer state")
  T.eq(t["ibot_loss.center"]:shape()[2], 32, "centre")
  T.eq(t["teacher.module.backbone.cls_token"], full.teacher.backbone.cls_token, "the file holds the final teacher")
  assert(not exists(base .. "_full/checkpoint.safetensors.tmp"), "no temporary file left")
  -- saveckp_freq 1: a numbered copy after 0-based epoch 1 (not after epoch 0, as in the reference)
  assert(exists(base .. "_full/checkpoint0001.safetensors"), "checkpoint0001")
  assert(not exists(base .. "_full/checkpoint0000.safetensors"), "no checkpoint0000")
end)

T.test("resume mid-epoch: 4 iterations, stop, resume for 2 equals 6 uninterrupted, bit for bit", function()
  local first = run_quiet(config(base .. "_resume", {stop_after_iters = 4}))
  T.eq(#first.losses, 4, "stopped after 4 iterations")
  T.eq(first.iteration, 4, "next iteration")
  local _, meta = sere.io.load(base .. "_resume/checkpoint.safetensors")
  T.eq(meta.iteration, "4", "checkpoint at the stop")
  local second, lines = run_quiet(config(base .. "_resume"))
  assert(lines[1]:find("resumed from .*checkpoint%.safetensors at iteration 4 %(epoch 1, batch 2 of 3%)"), lines[1])
  T.eq(second.losses[4], nil, "iteration 3 is not run again")
  for it = 1, 4 do T.eq(first.losses[it], full.losses[it], "loss " .. it .. " before the stop") end
  for it = 5, 6 do T.eq(second.losses[it], full.losses[it], "loss " .. it .. " after resume") end
  local a, b = full.teacher:state_dict(), second.teacher:state_dict()
  for name, t in pairs(a) do T.eq(b[name], t, "teacher " .. name) end
  a, b = full.student:state_dict(), second.student:state_dict()
  for name, t in pairs(a) do T.eq(b[name], t, "student " .. name) end
end)

T.test("--load_from and --resume resume from a named checkpoint; a missing one is an error", function()
  local out = base .. "_loadfrom"
  sh("mkdir -p " .. out .. " && cp " .. base .. "_full/checkpoint0001.safetensors " .. out .. "/")
  local res = run_quiet(config(out, {load_from = "checkpoint0001.safetensors", epochs = 3}))
  T.eq(res.losses[6], nil, "epochs 0-1 come from the checkpoint")
  assert(res.losses[7] and res.losses[9], "epoch 2 runs")
  T.raises(function() run_quiet(config(out, {load_from = "nothing.safetensors"})) end, "no file")
  -- --resume takes a path as given
  local other = base .. "_resumeflag"
  res = run_quiet(config(other, {resume = base .. "_full/checkpoint0001.safetensors", epochs = 3}))
  T.eq(res.losses[6], nil, "--resume: epochs 0-1 come from the checkpoint")
  assert(res.losses[7], "--resume: epoch 2 runs")
  T.raises(function() run_quiet(config(other, {resume = other .. "/none.safetensors"})) end, "no such file")
end)

T.test("gradient accumulation: one optimizer step per accum_iter iterations, lr scaled by it", function()
  local res = run_quiet(config(base .. "_accum", {accum_iter = 2, epochs = 1, saveckp_freq = 0}))
  T.eq(#res.losses, 3, "3 iterations")
  local t = sere.io.load(base .. "_accum/checkpoint.safetensors")
  -- iterations 0-1 form a group, iteration 2 ends the run (a group cut short by the end)
  T.eq(t["optimizer.backbone.cls_token.step"]:item(), 2, "two optimizer steps")
  local s = R.schedules(config("x", {accum_iter = 2, epochs = 1, warmup_epochs = 0}), 3, 1)
  T.close(s.lr[1], 0.05 * 4 * 2 / 256, 0, 1e-12, "peak lr = lr x batch x accum / 256")
end)

T.test("a non-finite loss stops the run, naming the step, the terms and the checkpoint", function()
  local a = config(base .. "_nan", {alpha = 0 / 0}) -- a NaN loss weight: the total is NaN at the first iteration
  local err = T.raises(function() run_quiet(a) end, "non%-finite loss at step 0 %(epoch 0%)")
  assert(err:find("cls") and err:find("pixel") and err:find("channel") and err:find("total"), err)
  assert(err:find("no checkpoint written yet", 1, true), err)
end)

T.test("eval.knn on hand-made features", function()
  -- train: 2 points of class 1 near +x, 2 of class 2 near +y, 1 of class 3 at -x
  local ftr = sere.tensor({{1, 0}, {2, 0.2}, {0, 1}, {0.1, 3}, {-1, 0}}, {dtype = "f32"})
  local ltr = sere.tensor({1, 1, 2, 2, 3})
  local fte = sere.tensor({{5, 0.5}, {0.2, 1}, {-1, 0.1}, {1, 1.2}}, {dtype = "f32"})
  -- nearest neighbours by cosine: +x, +y, -x, and the diagonal point leans to +y
  T.eq(eval.knn(ftr, ltr, fte, sere.tensor({1, 2, 3, 2}), 1), 1.0, "k = 1, all right")
  T.eq(eval.knn(ftr, ltr, fte, sere.tensor({1, 2, 3, 1}), 1), 0.75, "k = 1, one wrong label")
  -- k = 5, T = 0.07: the lone class-3 point loses to the two class-1 points for test (-1, 0.1)?
  -- cos to (1,0) and (2,0.2) are ~-0.995 -> weights e^(-14.2); to (0,1), (0.1,3) ~0.1 -> e^(1.4..);
  -- to (-1,0) ~0.995 -> e^(14.2): class 3 wins by far.
  T.eq(eval.knn(ftr, ltr, fte, sere.tensor({1, 2, 3, 2}), 5, 0.07, 3), 1.0, "k = 5 weighted vote")
  -- a large temperature flattens the weights: with k = 5 the two class-1 and two class-2
  -- points outvote the single class-3 point for (-1, 0.1); (0.1,3) and (0,1) are closer than
  -- (1,0), (2,0.2), so class 2 wins
  T.eq(eval.knn(ftr, ltr, sere.tensor({{-1, 0.1}}, {dtype = "f32"}), sere.tensor({2}), 5, 100, 3), 1.0,
    "T = 100: counts dominate")
  T.eq(eval.knn(ftr, ltr, sere.tensor({{-1, 0.1}}, {dtype = "f32"}), sere.tensor({3}), 5, 100, 3), 0.0,
    "T = 100: class 3 loses")
  T.raises(function() eval.knn(ftr, ltr, sere.zeros(2, 3), sere.tensor({1, 2}), 1) end, "same D")
  T.raises(function() eval.knn(ftr, sere.tensor({1, 2}), fte, sere.tensor({1, 2, 3, 2}), 1) end, "labels")
end)

T.test("eval.extract: normalised class tokens, one per image, labels in order", function()
  local ds = sere.dataset_scan(root)
  local f, l = eval.extract(full.teacher.backbone, ds, 16, 3)
  T.eq(table.concat(f:shape(), "x"), "12x16", "features [N, D]")
  T.close(f:norm(2, 2), sere.ones(12), 1e-6, 1e-6, "unit norm")
  T.eq(table.concat(l:totable(), ","), "1,1,1,1,1,1,2,2,2,2,2,2", "labels")
  assert(full.teacher.backbone.training, "training mode restored")
  -- one image by hand: its centred resize through the backbone
  local img = sere.augment_normalize(sere.augment_resize(sere.image_load(ds:path(5)), {0, 0, 24, 24}, 16, 16))
  local want = sere.no_grad(function()
    full.teacher.backbone:eval()
    local dev = full.teacher.backbone:parameters()[1]:device() -- cuda when train.run found a GPU
    local out = full.teacher.backbone:get_intermediate_layers(img:view(1, 3, 16, 16):to(dev), 1)[1]
    full.teacher.backbone:train()
    return sere.normalize(out:select(2, 1), -1, 1e-12):cpu()
  end)
  T.close(f:narrow(1, 5, 1), want, 1e-6, 1e-5, "image 5")
end)

sh(string.format("rm -rf %s_data %s_full %s_resume %s_loadfrom %s_resumeflag %s_accum %s_nan", base, base, base, base, base, base,
  base))
T.finish()
