-- sere.train — the iBOT + SERE pre-training loop (method.md sections 8
-- and 10): builds the student and teacher, the loader and the schedules
-- from one configuration table, runs the iterations in the order of 8.4,
-- logs, and writes a resumable checkpoint at the end of every epoch.
--
--   local train = require "sere.train"
--   local result = train.run(cfg)   -- cfg: see recipes/tiny_sere.lua for every key
--
-- A checkpoint is one safetensors file, output_dir/checkpoint.safetensors:
-- tensors "student.module.<name>", "teacher.module.<name>" (the reference's
-- data-parallel names, 10.3), "optimizer.<param>.{exp_avg,exp_avg_sq,step}",
-- "ibot_loss.center", "ibot_loss.center2"; metadata "epoch" (the next
-- epoch to run), "iteration", "rng_seed"/"rng_offset" (the default
-- generator, which drop path draws from), "args" (the configuration as
-- JSON) and the optimiser's "optimizer.*" scalars. Resuming restores all of
-- it, so a resumed CPU run continues exactly like an uninterrupted one.
local sere = require "sere"
local nn = require "sere.nn"
local data = require "sere.data"
local loss = require "sere.loss"
local objective = require "sere.objective"
local optim = require "sere.optim"
local schedule = require "sere.schedule"

local train = {}

-- ---- JSON (the log and the saved configuration) ---------------------------------

local function json(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return math.type(v) == "integer" and tostring(v) or string.format("%.8g", v)
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if #v > 0 or next(v) == nil then
      local items = {}
      for i, x in ipairs(v) do items[i] = json(x) end
      return "[" .. table.concat(items, ", ") .. "]"
    end
    local keys = {}
    for k, x in pairs(v) do
      if type(k) == "string" and type(x) ~= "function" and type(x) ~= "userdata" then keys[#keys + 1] = k end
    end
    table.sort(keys)
    local items = {}
    for i, k in ipairs(keys) do items[i] = json(k) .. ": " .. json(v[k]) end
    return "{" .. table.concat(items, ", ") .. "}"
  end
  return "null"
end
train.json = json

local function append_line(path, line)
  local f = assert(io.open(path, "a"))
  f:write(line, "\n")
  f:close()
end

-- ---- networks, data, schedules ------------------------------------------------------

--- build_networks(cfg) -> student, teacher: nn.MultiCrop(ViT, IbotHead)
--- pairs. The student has the mask embedding and drop path; the teacher
--- starts as a copy of the student's weights, has no mask embedding and no
--- drop path, and gets no gradients. cfg: embed_dim, depth, heads,
--- patch_size, global_size, drop_path_rate, out_dim, head_hidden_dim,
--- bottleneck_dim, norm_last_layer, shared_head.
function train.build_networks(cfg)
  local function network(is_student)
    local vit = nn.VisionTransformer({embed_dim = cfg.embed_dim, depth = cfg.depth, heads = cfg.heads,
      patch_size = cfg.patch_size, img_size = cfg.global_size, masked_im_modeling = is_student,
      drop_path_rate = is_student and cfg.drop_path_rate or 0})
    local head = nn.IbotHead(cfg.embed_dim, cfg.out_dim, {hidden_dim = cfg.head_hidden_dim,
      bottleneck_dim = cfg.bottleneck_dim, shared_head = cfg.shared_head,
      norm_last_layer = (not is_student) or cfg.norm_last_layer})
    return nn.MultiCrop(vit, head)
  end
  local student, teacher = network(true), network(false)
  teacher:load_state_dict(student:state_dict(), {strict = false}) -- the student's masked_embed stays behind
  for _, p in ipairs(teacher:parameters()) do p.requires_grad = false end
  return student, teacher
end

--- crops(cfg): the multi-crop pipeline; cfg.crops if the recipe built one,
--- else data.multicrop_recipe from the cfg keys of the same names.
function train.crops(cfg)
  return cfg.crops or data.multicrop_recipe({global_crops_number = cfg.global_crops_number,
    global_crops_scale = cfg.global_crops_scale, local_crops_number = cfg.local_crops_number,
    local_crops_scale = cfg.local_crops_scale, global_size = cfg.global_size, local_size = cfg.local_size,
    patch_size = cfg.patch_size, pred_ratio = cfg.pred_ratio, pred_ratio_var = cfg.pred_ratio_var,
    overlap_size = cfg.overlap_size, lg_size = cfg.lg_size})
end

-- The objective's settings for one epoch (teacher temperatures warm up per epoch, 7.1).
local function objective_cfg(cfg, epoch)
  return {
    n_global = cfg.global_crops_number, heads = cfg.heads, alpha = cfg.alpha, beta = cfg.beta,
    teacher_temp = loss.teacher_temperature(epoch, cfg.warmup_teacher_temp, cfg.teacher_temp,
      cfg.warmup_teacher_temp_epochs),
    teacher_patch_temp = loss.teacher_temperature(epoch, cfg.warmup_teacher_patch_temp, cfg.teacher_patch_temp,
      cfg.warmup_teacher_temp_epochs),
    student_temp = cfg.student_temp, pixel_temp = cfg.pixel_temp, channel_temp = cfg.channel_temp,
    center_momentum = cfg.center_momentum, sigma_global = cfg.sigma_global, sigma_local = cfg.sigma_local,
  }
end

-- ---- checkpoints ------------------------------------------------------------------------

local function prefixed(out, prefix, map)
  for k, v in pairs(map) do out[prefix .. k] = v end
end

--- save_checkpoint(path, run): writes to path .. ".tmp", then renames it
--- over path, so a reader finds the old file or the new one, never half.
--- run: student, teacher, optimizer, state (centres), epoch (the next
--- one), iteration, cfg.
function train.save_checkpoint(path, run)
  local tensors = {["ibot_loss.center"] = run.state.center, ["ibot_loss.center2"] = run.state.center2}
  prefixed(tensors, "student.module.", run.student:state_dict())
  prefixed(tensors, "teacher.module.", run.teacher:state_dict())
  local opt_tensors, opt_meta = run.optimizer:state_dict()
  prefixed(tensors, "optimizer.", opt_tensors)
  local rng = sere.get_rng_state()
  local meta = {epoch = tostring(run.epoch), iteration = tostring(run.iteration), args = json(run.cfg),
    rng_seed = tostring(rng.seed), rng_offset = tostring(rng.offset)}
  prefixed(meta, "optimizer.", opt_meta)
  sere.io.save(path .. ".tmp", tensors, meta)
  local ok, err = os.rename(path .. ".tmp", path)
  if not ok then error("train: could not move the checkpoint into place: " .. tostring(err), 0) end
end

-- The entries of `map` under `prefix`, with the prefix removed.
local function strip(map, prefix)
  local out = {}
  for k, v in pairs(map) do
    if k:sub(1, #prefix) == prefix then out[k:sub(#prefix + 1)] = v end
  end
  return out
end

--- load_checkpoint(path, run) -> next epoch, iteration: restores what
--- save_checkpoint wrote into run's networks, optimizer and centres, and
--- the default generator's state.
function train.load_checkpoint(path, run)
  local t, meta = sere.io.load(path)
  run.student:load_state_dict(strip(t, "student.module."))
  run.teacher:load_state_dict(strip(t, "teacher.module."))
  run.optimizer:load_state_dict(strip(t, "optimizer."), strip(meta, "optimizer."))
  sere.no_grad(function()
    run.state.center:copy_(t["ibot_loss.center"])
    run.state.center2:copy_(t["ibot_loss.center2"])
  end)
  sere.set_rng_state({seed = math.tointeger(tonumber(meta.rng_seed)), offset = math.tointeger(tonumber(meta.rng_offset))})
  return math.tointeger(tonumber(meta.epoch)), math.tointeger(tonumber(meta.iteration))
end

-- ---- the loop -----------------------------------------------------------------------------

local function clock_str(s)
  s = math.max(0, math.floor(s + 0.5))
  return string.format("%d:%02d:%02d", s // 3600, s // 60 % 60, s % 60)
end

-- 10.2: fraction of images whose teacher argmax on global crop 1 equals the
-- student argmax on global crop 2 (raw logits).
local function agreement(terms, b)
  local _, t = terms.teacher_cls:narrow(1, 1, b):max(2)
  local _, s = terms.student_cls:narrow(1, b + 1, b):max(2)
  return t:eq(s):float():mean():item()
end

local METERS = {"loss", "cls", "patch", "loss_attn", "loss_attn_ffn", "total", "acc"}

--- run(cfg) -> {student, teacher, losses, first_loss, last_loss, epoch}:
--- trains from cfg (every key is listed in recipes/tiny_sere.lua), resuming from
--- output_dir/checkpoint.safetensors when it exists. losses[it + 1] is the
--- total loss of global iteration it, for the iterations run in this call;
--- first_loss / last_loss those of its first and last iteration. cfg.stop_after_epochs
--- (optional) ends the call after that many epochs in all, as if the run
--- were killed there; the schedules still span cfg.epochs.
function train.run(cfg)
  assert(cfg.output_dir, "train.run: cfg.output_dir is required")
  os.execute("mkdir -p '" .. cfg.output_dir .. "'")
  local ckpt = cfg.output_dir .. "/checkpoint.safetensors"
  local log_path = cfg.output_dir .. "/log.txt"
  sere.manual_seed(cfg.seed)

  local student, teacher = train.build_networks(cfg)
  local loader = data.Loader({dataset = cfg.data_path, recipe = train.crops(cfg), batch_size = cfg.batch_size_per_gpu,
    threads = cfg.num_workers, seed = cfg.seed})
  local niter = loader:num_batches()
  if niter == 0 then error("train: the dataset holds fewer images than one batch", 0) end
  -- a run shorter than the warm-up warms up over all of it
  local sched = schedule.training_schedules(setmetatable({warmup_epochs = math.min(cfg.warmup_epochs, cfg.epochs)},
    {__index = cfg}), niter)
  local opt = optim.AdamW(optim.param_groups(student))
  local ema = optim.EMA(student, teacher)
  local state = {center = sere.zeros(1, cfg.out_dim), center2 = sere.zeros(1, 1, cfg.out_dim)}
  local run = {student = student, teacher = teacher, optimizer = opt, state = state, cfg = cfg}

  local start_epoch = 0
  local f = io.open(ckpt, "rb")
  if f then
    f:close()
    start_epoch = train.load_checkpoint(ckpt, run)
    print(string.format("train: resumed from %s at epoch %d", ckpt, start_epoch))
  end
  print(string.format("train: %d parameters in the student, %d iterations per epoch of %d images, %d epochs",
    student:num_parameters(), niter, cfg.batch_size_per_gpu, cfg.epochs))

  local losses, first_loss, last_loss = {}, nil, nil
  local last_epoch = math.min(cfg.epochs, cfg.stop_after_epochs or cfg.epochs)
  local t_start, iters_done = sere.clock(), 0
  for epoch = start_epoch, last_epoch - 1 do
    local ocfg = objective_cfg(cfg, epoch)
    local sums, i = {}, 0
    for _, k in ipairs(METERS) do sums[k] = 0 end
    for batch in loader:epoch(epoch) do
      local it = epoch * niter + i
      opt:set_lr_wd(sched.lr[it + 1], sched.wd[it + 1])                          -- 8.4 step 1
      local total, terms = objective.compute(student, teacher, batch, state, ocfg) -- steps 3-4
      local m = {loss = terms.ibot:item(), cls = terms.cls:item(), patch = terms.mim:item(),
        loss_attn = terms.pixel:item(), loss_attn_ffn = terms.channel:item(), total = total:item()}
      if m.total ~= m.total or math.abs(m.total) == math.huge then                -- step 5
        local saved = start_epoch > 0 or epoch > start_epoch
        error(string.format("train: non-finite loss at step %d (epoch %d): cls %g, patch %g, pixel %g, channel %g, "
          .. "total %g; %s", it, epoch, m.cls, m.patch, m.loss_attn, m.loss_attn_ffn, m.total,
          saved and ("resume from " .. ckpt) or "no checkpoint written yet"), 0)
      end
      m.acc = agreement(terms, cfg.batch_size_per_gpu)                             -- step 6
      total:backward()                                                             -- step 7
      optim.update({optimizer = opt, student = student, ema = ema, momentum = sched.momentum[it + 1],
        clip_grad = cfg.clip_grad, epoch = epoch, freeze_last_layer = cfg.freeze_last_layer})  -- step 8
      losses[it + 1] = m.total
      first_loss, last_loss = first_loss or m.total, m.total
      for _, k in ipairs(METERS) do sums[k] = sums[k] + m[k] end
      i, iters_done = i + 1, iters_done + 1

      if i % cfg.print_freq == 0 or i == niter then                                -- step 9
        local elapsed = sere.clock() - t_start
        local remaining = (last_epoch - epoch) * niter - i
        print(string.format("[%d/%d] epoch %d/%d  eta %s  %.1f img/s  cls %.4f  patch %.4f  pixel %.4f  "
          .. "channel %.4f  total %.4f  acc %.2f  lr %.3g  wd %.3g", it + 1, cfg.epochs * niter, epoch + 1, cfg.epochs,
          clock_str(elapsed / iters_done * remaining), iters_done * cfg.batch_size_per_gpu / elapsed, m.cls, m.patch,
          m.loss_attn, m.loss_attn_ffn, m.total, m.acc, sched.lr[it + 1], sched.wd[it + 1]))
        io.stdout:flush()
        append_line(log_path, json({step = it + 1, epoch = epoch, cls = m.cls, patch = m.patch, loss = m.loss,
          loss_attn = m.loss_attn, loss_attn_ffn = m.loss_attn_ffn, total = m.total, acc = m.acc,
          lr = sched.lr[it + 1], wd = sched.wd[it + 1]}))
      end
    end

    local rec = {epoch = epoch}
    for _, k in ipairs(METERS) do rec["train_" .. k] = sums[k] / math.max(i, 1) end
    append_line(log_path, json(rec))
    run.epoch, run.iteration = epoch + 1, (epoch + 1) * niter
    train.save_checkpoint(ckpt, run)
  end
  loader:close()
  return {student = student, teacher = teacher, losses = losses, first_loss = first_loss, last_loss = last_loss,
    epoch = last_epoch}
end

return train
