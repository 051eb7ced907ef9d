-- step.lua — one full iBOT + SERE training step of a recipe, sere next to
-- PyTorch: teacher forward on the 2 global crops, student forward on the
-- masked global crops and the 10 local crops, iBOT + SERE losses
-- (objective.lua), backward, per-tensor clipping, AdamW and the teacher EMA
-- (optim.update), on a synthetic batch of the recipe's shapes. Prints one
-- table: images/s, milliseconds per step (forward / backward / optimizer),
-- peak memory, model FLOPs per second and utilisation (bench/flops.lua),
-- and the ratio sere / PyTorch images/s for each PyTorch mode
-- (bench/step_torch.py, run by the same command after sere), for each
-- recipe of --arch.
--
--   build/sere bench/step.lua [--arch vit_small|vit_base|vit_small,vit_base] [--batch B] [--steps N]
--     [--warmup N] [--device cuda|cpu] [--torch_modes fp32,amp_fp16,amp_bf16,compile] [--no_torch]
--     [--python PATH] [--drop_path X]
--
-- The batch (random crops, block masks drawn as the recipe draws them,
-- random overlap grids in [-1, 1]) and the student's initial weights are
-- written to one safetensors file that step_torch.py reads, so both sides
-- run the same numbers from the same starting point; the first step's
-- total loss of each is printed as a smoke test (drop path draws differ
-- between the two: a few 1e-2 apart by default, equal to float rounding
-- with --drop_path 0). The step is that of an epoch past
-- --freeze_last_layer (every parameter updates), with the lr, weight decay
-- and teacher momentum at their starting values. Times are medians over
-- --steps steps after --warmup steps; on CUDA each phase ends with a
-- synchronisation.
local sere = require "sere"
local args = require "sere.args"
local optim = require "sere.optim"
local recipe = require "sere.recipe"
local schedule = require "sere.schedule"
local train = require "sere.train"

local here = arg[0]:match("(.*)/") or "."
local flops = dofile(here .. "/flops.lua")

local OPTS = {program = "bench/step.lua", description = "One iBOT + SERE training step: sere vs PyTorch."}
local a = args.parse(arg, {
  {"arch", "vit_small", "the recipe(s): recipes/<arch>.lua, vit_small and/or vit_base, comma-separated"},
  {"batch", 0, "images per step (0: 128 for vit_small and 64 for vit_base on CUDA, 2 on CPU)"},
  {"steps", 0, "timed steps (0: 10 on CUDA, 2 on CPU)"},
  {"warmup", 0, "untimed steps first (0: 3 on CUDA, 1 on CPU)"},
  {"device", "auto", "cuda, cpu, or auto (cuda when a GPU is usable)"},
  {"torch_modes", "", "PyTorch modes, comma-separated, each [compile_]fp32|tf32|amp_fp16|amp_bf16, or compile "
    .. "(= compile_amp_bf16) (default: fp32,amp_fp16,amp_bf16,compile on CUDA, fp32 on CPU)"},
  {"no_torch", false, "time sere only"},
  {"python", "/usr/bin/python3", "the Python that has PyTorch"},
  {"drop_path", nil, "the student's drop-path rate (default: the recipe's)", type = "float"},
}, OPTS)

local device = train.device(a.device)
local cuda = device == "cuda"
local steps = a.steps > 0 and a.steps or (cuda and 10 or 2)
local warmup = a.warmup > 0 and a.warmup or (cuda and 3 or 1)
local torch_modes = a.torch_modes ~= "" and a.torch_modes or (cuda and "fp32,amp_fp16,amp_bf16,compile" or "fp32")
local archs = {}
for name in a.arch:gmatch("[^,]+") do
  if name ~= "vit_small" and name ~= "vit_base" then
    args.fail(OPTS, "--arch: expected vit_small and/or vit_base, got '" .. name .. "'")
  end
  archs[#archs + 1] = name
end

local function sync() if cuda then sere.cuda.synchronize() end end
local function median(xs)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  return s[(#s + 1) // 2]
end
-- The CPU's "peak memory": the process's peak resident memory in bytes
-- (Linux), which reset_peak() restarts from the current resident memory.
local function peak_rss()
  local f = io.open("/proc/self/status")
  local kb = f and f:read("a"):match("VmHWM:%s*(%d+)")
  if f then f:close() end
  return kb and tonumber(kb) * 1024
end
local function reset_peak()
  if cuda then return sere.cuda.reset_peak_memory_stats() end
  local f = io.open("/proc/self/clear_refs", "w")
  if f then
    f:write("5")
    f:close()
  end
end

-- The recipe's student and teacher at initialisation (the same weights on
-- every call).
local function initial_networks(R, ra)
  sere.manual_seed(0)
  return R.networks(ra)
end

--- setup(arch) -> the recipe's networks, flags, loss settings, a synthetic
--- batch of its shapes (objective.lua's fields), the step's lr / wd /
--- momentum and the shape of the step for flops.lua.
local function setup(arch)
  local R = recipe.load(here .. "/../recipes/" .. arch .. ".lua")
  local ra = R:parse({})
  ra.batch_size_per_gpu = a.batch > 0 and a.batch or (not cuda and 2 or arch == "vit_base" and 64 or 128)
  if a.drop_path then ra.drop_path = a.drop_path end
  local B, G, L = ra.batch_size_per_gpu, ra.global_crops_number, ra.local_crops_number
  local student, teacher = initial_networks(R, ra)
  local vit = student.backbone
  local epoch = ra.freeze_last_layer -- the first epoch in which the prototype layer trains
  local lcfg = R.loss_config(ra, epoch)
  lcfg.heads = vit.heads

  local gen = sere.Generator(1)
  local hp = ra.global_size // ra.patch_size
  local masks = {}
  for i = 1, G * B do
    masks[i] = sere.augment_block_mask(hp, hp, {mean = ra.pred_ratio, var = ra.pred_ratio_var}, gen, ra.pred_shape)
  end
  local function grid(shape) return sere.rand(shape, {generator = gen}) * 2 - 1 end
  local S, lg = ra.overlap_size, ra.lg_size
  local batch = {
    global_crops = sere.randn({G * B, 3, ra.global_size, ra.global_size}, {generator = gen}),
    local_crops = sere.randn({L * B, 3, ra.local_size, ra.local_size}, {generator = gen}),
    masks = sere.stack(masks),
    grids_gg_rows = grid({G * B, S[1], S[1], 2}), grids_gg_cols = grid({G * B, S[2], S[2], 2}),
    grids_lg_local = grid({G * L, B, lg, lg, 2}), grids_lg_global = grid({G * L, B, lg, lg, 2}),
  }
  local k_patch = (ra.shared_head or ra.shared_head_teacher) and ra.out_dim or ra.patch_out_dim
  return {R = R, ra = ra, student = student, teacher = teacher, lcfg = lcfg, epoch = epoch, batch = batch,
    lr = schedule.scaled_lr(ra.lr, B), wd = ra.weight_decay, momentum = ra.momentum_teacher, k_patch = k_patch,
    shape = {embed_dim = vit.embed_dim, depth = vit.blocks:len(), patch_size = ra.patch_size,
      global_size = ra.global_size, local_size = ra.local_size, head_hidden_dim = ra.head_hidden_dim,
      bottleneck_dim = ra.bottleneck_dim, out_dim = ra.out_dim, patch_out_dim = k_patch, batch = B, n_global = G,
      n_local = L, masked = batch.masks:sum():item(), overlap_size = S, lg_size = lg}}
end

--- write_torch_input(run, path): the batch, the student's initial weights
--- (built again: sere has trained its copy) and every setting
--- step_torch.py needs, in one safetensors file.
local function write_torch_input(run, path)
  local ra, lcfg, shape = run.ra, run.lcfg, run.shape
  local tensors = {}
  for k, v in pairs(run.batch) do tensors[k] = v end
  for k, v in pairs(initial_networks(run.R, ra):state_dict()) do tensors["student." .. k] = v end
  sere.io.save(path, tensors, {
    embed_dim = shape.embed_dim, depth = shape.depth, heads = lcfg.heads, patch_size = ra.patch_size,
    global_size = ra.global_size, local_size = ra.local_size, out_dim = ra.out_dim, patch_out_dim = ra.patch_out_dim,
    head_hidden_dim = ra.head_hidden_dim, bottleneck_dim = ra.bottleneck_dim,
    norm_last_layer = tostring(ra.norm_last_layer), shared_head = tostring(ra.shared_head),
    shared_head_teacher = tostring(ra.shared_head_teacher), drop_path = ra.drop_path,
    n_global = shape.n_global, n_local = shape.n_local, batch = shape.batch, alpha = lcfg.alpha, beta = lcfg.beta,
    lambda1 = lcfg.lambda1, lambda2 = lcfg.lambda2, teacher_temp = lcfg.teacher_temp,
    teacher_patch_temp = lcfg.teacher_patch_temp, student_temp = lcfg.student_temp, pixel_temp = lcfg.pixel_temp,
    channel_temp = lcfg.channel_temp, center_momentum = lcfg.center_momentum, sigma_global = lcfg.sigma_global,
    sigma_local = lcfg.sigma_local, clip_grad = ra.clip_grad, lr = run.lr, weight_decay = run.wd,
    momentum = run.momentum,
  })
end

--- time_sere(run) -> a table row: median seconds of the forward (teacher,
--- student, losses, centres), backward, optimizer (optim.update: clipping,
--- AdamW, EMA) and whole step; peak memory; the first step's total loss.
local function time_sere(run)
  local student, teacher, batch, ra = run.student, run.teacher, {}, run.ra
  student:to(device)
  teacher:to(device)
  for k, v in pairs(run.batch) do batch[k] = v:to(device) end
  local state = {center = sere.zeros({1, ra.out_dim}, {device = device}),
    center2 = sere.zeros({1, 1, run.k_patch}, {device = device})}
  local opt = optim.AdamW(optim.param_groups(student))
  opt:set_lr_wd(run.lr, run.wd)
  local ema = optim.EMA(student, teacher)
  local phases = {fwd = {}, bwd = {}, opt = {}, step = {}}
  local first_loss
  for i = 1, warmup + steps do
    if i == warmup + 1 then reset_peak() end
    local t0 = sere.clock()
    local total = run.R.objective(student, teacher, batch, state, run.lcfg)
    sync()
    local t1 = sere.clock()
    total:backward()
    sync()
    local t2 = sere.clock()
    optim.update({optimizer = opt, student = student, ema = ema, momentum = run.momentum, clip_grad = ra.clip_grad,
      epoch = run.epoch, freeze_last_layer = ra.freeze_last_layer})
    sync()
    local t3 = sere.clock()
    first_loss = first_loss or total:item()
    if i > warmup then
      local k = i - warmup
      phases.fwd[k], phases.bwd[k], phases.opt[k], phases.step[k] = t1 - t0, t2 - t1, t3 - t2, t3 - t0
    end
  end
  return {name = "sere f32", fwd = median(phases.fwd), bwd = median(phases.bwd), opt = median(phases.opt),
    step = median(phases.step), peak = cuda and sere.cuda.memory_stats().peak_allocated or peak_rss(),
    loss = first_loss, precision = "fp32"} -- f32 throughout, exact f32 products (no TF32)
end

--- time_torch(path) -> rows, one per mode that ran, from step_torch.py's
--- `<mode> <key>\t<value>` lines (fwd, bwd, opt, step: seconds; peak: bytes;
--- loss); its other output is passed through.
local function time_torch(path)
  local cmd = string.format("%s %s/step_torch.py %s %s %d %d %s", a.python, here, path, device, steps, warmup,
    torch_modes)
  local by_mode, rows = {}, {}
  local p = io.popen(cmd)
  for line in p:lines() do
    local mode, key, value = line:match("^(%S+) (%S+)\t(%S+)$")
    if mode then
      if not by_mode[mode] then
        by_mode[mode] = {name = "torch " .. mode, precision = mode:gsub("^compile_", "")}
        rows[#rows + 1] = by_mode[mode]
      end
      by_mode[mode][key] = tonumber(value)
    else
      print(line)
    end
  end
  if not p:close() then io.stderr:write("step: " .. cmd .. " failed; its rows are missing\n") end
  return rows
end

-- Dense peaks of an H100 SXM (the H200 has the same), TFLOP/s.
local PEAK = {fp32 = {67, "FP32"}, tf32 = {494, "TF32"}, amp_fp16 = {989, "FP16"}, amp_bf16 = {989, "BF16"}}

local function print_table(arch, shape, rows)
  local f = flops.step(shape)
  local function ms(x) return x and string.format("%.1f", x * 1e3) or "-" end
  print(string.format("\n%s, batch %d (%d x %d px + %d x %d px crops, %d masked tokens), on %s; median of %d steps "
    .. "after %d", arch, shape.batch, shape.n_global * shape.batch, shape.global_size, shape.n_local * shape.batch,
    shape.local_size, shape.masked, cuda and sere.cuda.device_name() or "CPU", steps, warmup))
  print(string.format("model FLOPs per step: %.3g (teacher %.3g, student forward %.3g, backward %.3g; "
    .. "bench/flops.lua)", f.total, f.teacher, f.student_forward, f.student_backward))
  print(string.format("%-22s %8s %9s %8s %8s %8s %10s %8s %6s %6s %10s", "run", "img/s", "ms/step", "fwd", "bwd",
    "opt", "peak MiB", "TFLOP/s", "MFU", "peak", "sere/this"))
  for _, r in ipairs(rows) do
    if r.step then
      local peak = cuda and PEAK[r.precision]
      print(string.format("%-22s %8.1f %9s %8s %8s %8s %10s %8.2f %6s %6s %10.2f", r.name, shape.batch / r.step,
        ms(r.step), ms(r.fwd), ms(r.bwd), ms(r.opt), r.peak and string.format("%.0f", r.peak / 2 ^ 20) or "-",
        f.total / r.step / 1e12, peak and string.format("%.1f%%", 100 * f.total / r.step / (peak[1] * 1e12)) or "-",
        peak and peak[2] or "-", r.step / rows[1].step))
    end
  end
  local losses = {}
  for _, r in ipairs(rows) do
    if r.loss then losses[#losses + 1] = string.format("%s %.5f", r.name, r.loss) end
  end
  print("first-step total loss (same weights and batch): " .. table.concat(losses, ", "))
end

for _, arch in ipairs(archs) do
  local run = setup(arch)
  local path = os.tmpname()
  local rows = {time_sere(run)}
  if not a.no_torch then write_torch_input(run, path) end -- after sere's timing: no effect on its peak memory
  local shape = run.shape
  run = nil -- free sere's networks and batch (on the GPU too) before PyTorch runs
  collectgarbage()
  if cuda then sere.cuda.empty_cache() end
  if not a.no_torch then
    for _, r in ipairs(time_torch(path)) do rows[#rows + 1] = r end
  end
  os.remove(path)
  print_table(arch, shape, rows)
end
print(cuda and "\nMFU: model FLOPs / step time / the dense peak of an H100 SXM in the row's precision "
  .. "(FP32 67, TF32 494, BF16 and FP16 989 TFLOP/s); peak MiB: the largest memory held by tensors"
  or "\nCPU: no MFU (no peak stated); peak MiB: the process's peak resident memory during the timed steps")
local words = {arg[-1], arg[0]}
for _, w in ipairs(arg) do words[#words + 1] = w end
print("reproduce: " .. table.concat(words, " "))
