-- sere.train — the iBOT + SERE pre-training loop (method.md sections 8
-- and 10): takes a recipe's pieces (networks, crops, schedules, loss
-- settings, objective; see recipes/vit_small.lua) and the parsed flags,
-- runs the iterations in the order of 8.4 with gradient accumulation, logs
-- a progress line and JSON records, and writes resumable checkpoints.
--
--   local train = require "sere.train"
--   local result = train.run(a, R)   -- a: flags (sere.recipe), R: a sere.recipe.Recipe
--
-- A checkpoint is one safetensors file, output_dir/checkpoint.safetensors:
-- tensors "student.module.<name>", "teacher.module.<name>" (the reference's
-- data-parallel names, 10.3), "optimizer.<param>.{exp_avg,exp_avg_sq,step}",
-- "ibot_loss.center", "ibot_loss.center2"; metadata "iteration" (the next
-- global iteration to run), "epoch" (its epoch), "rng_seed"/"rng_offset"
-- (the default generator, which drop path draws from), "args" (the flags as
-- JSON) and the optimiser's "optimizer.*" scalars. It is written at the end
-- of every epoch and every --saveckp_iters iterations; a copy
-- checkpointNNNN.safetensors is kept when the 0-based epoch NNNN is a
-- positive multiple of --saveckp_freq. Resuming restores all of it, and the
-- loader re-derives the data order from (seed, epoch) and starts mid-epoch,
-- so a resumed CPU run continues exactly like an uninterrupted one.
--
-- Under mpirun (method.md section 9) every rank runs this loop on its
-- shard of each epoch (data.Loader's rank / world_size) with batch
-- --batch_size_per_gpu: the learning rate scales with the global batch,
-- rank 0's initial weights are broadcast, every BatchNorm is synchronised,
-- gradients are averaged over ranks before clipping, the centres use
-- all-reduced teacher statistics (sere.objective), the meters are averaged
-- over ranks, and a non-finite loss on any rank stops all of them. Only
-- rank 0 prints and writes the log and checkpoints; every rank reads the
-- checkpoint it resumes from.
local sere = require "sere"
local data = require "sere.data"
local dist = require "sere.dist"
local optim = require "sere.optim"
local json = require("sere.json").encode

local train = {}


local function append_line(path, line)
  local f = assert(io.open(path, "a"))
  f:write(line, "\n")
  f:close()
end

-- ---- checkpoints ------------------------------------------------------------------------

local function prefixed(out, prefix, map)
  for k, v in pairs(map) do out[prefix .. k] = v end
end

--- save_checkpoint(path, run): writes to path .. ".tmp", then renames it
--- over path, so a reader finds the old file or the new one, never half.
--- run: student, teacher, optimizer, state (centres), iteration (the
--- next global one), epoch (its epoch), cfg (the flags).
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

--- load_checkpoint(path, run) -> next global iteration: restores what
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
  local it = math.tointeger(tonumber(meta.iteration))
  if not it then error("train: " .. path .. " has no iteration count; is it a sere checkpoint?", 0) end
  return it
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
  return t:eq(s):float():mean()
end

-- The step's meters as Lua numbers, read back in one transfer (each
-- separate :item() of a GPU tensor would wait for the device).
local function meters(total, terms, b)
  local v = sere.no_grad(function()
    return sere.stack({terms.ibot:float(), terms.cls:float(), terms.mim:float(), terms.pixel:float(),
      terms.channel:float(), total:float(), agreement(terms, b)}):totable()
  end)
  return {loss = v[1], cls = v[2], patch = v[3], loss_attn = v[4], loss_attn_ffn = v[5], total = v[6], acc = v[7]}
end

local METERS = {"loss", "cls", "patch", "loss_attn", "loss_attn_ffn", "total", "acc"}

-- The meters averaged over ranks (every rank has B images, so the mean of
-- the ranks' means is the mean over the global batch; 9, 10.2).
local function mean_over_ranks(m)
  local v = {}
  for i, k in ipairs(METERS) do v[i] = m[k] end
  v = dist.all_reduce(sere.tensor(v, {dtype = "f32"}), "avg"):totable()
  local out = {}
  for i, k in ipairs(METERS) do out[k] = v[i] end
  return out
end

-- The ranks (0-based) whose own total loss is not finite, as "1, 3".
local function nonfinite_ranks(total)
  local bad = {}
  for r, x in ipairs(dist.all_gather(sere.tensor({total}, {dtype = "f32"})):totable()) do
    if x ~= x or math.abs(x) == math.huge then bad[#bad + 1] = tostring(r - 1) end
  end
  return table.concat(bad, ", ")
end

-- The checkpoint to resume from: --resume (a path as given), --load_from
-- (relative to output_dir, as in the reference), else
-- output_dir/checkpoint.safetensors if it exists.
--- train.device(flag) -> "cpu" or "cuda": the --device flag resolved
--- ("auto" is cuda when a GPU is usable).
function train.device(flag)
  if flag == "auto" then return sere.cuda.is_available() and "cuda" or "cpu" end
  if flag ~= "cpu" and flag ~= "cuda" then
    error(string.format("train: --device must be auto, cpu or cuda, got '%s'", tostring(flag)), 0)
  end
  if flag == "cuda" and not sere.cuda.is_available() then
    error("train: --device cuda, but " .. (sere.cuda.compiled() and "no CUDA device is available"
      or "this sere was built without CUDA"), 0)
  end
  return flag
end

-- A batch from the loader (tensors, and tables of tensors) on the device.
local function to_device(batch, device)
  if device == "cpu" then return batch end
  local out = {}
  for k, v in pairs(batch) do
    if sere.is_tensor(v) then out[k] = v:to(device)
    elseif type(v) == "table" then out[k] = to_device(v, device)
    else out[k] = v end
  end
  return out
end

local function resume_path(a, ckpt)
  if a.resume then
    if not sere.io.exists(a.resume) then error("train: --resume " .. a.resume .. ": no such file", 0) end
    return a.resume
  end
  if a.load_from then
    local p = a.load_from:sub(1, 1) == "/" and a.load_from or (a.output_dir .. "/" .. a.load_from)
    if not sere.io.exists(p) then error("train: --load_from " .. a.load_from .. ": no file " .. p, 0) end
    return p
  end
  if sere.io.exists(ckpt) then return ckpt end
end

--- run(a, R) -> {student, teacher, state, losses, first_loss, last_loss,
--- iteration}: trains with recipe R's pieces and flags `a` (every flag of
--- sere.recipe), resuming as described at the top. state holds the
--- centres (center, center2). losses[it + 1] is the total loss of global
--- iteration it (the mean over ranks), for the iterations run in this call;
--- first_loss / last_loss those of its first and last iteration;
--- iteration the next global iteration. --stop_after_iters N ends the call
--- after global iteration N - 1, with a checkpoint there.
function train.run(a, R)
  assert(a.output_dir and a.data_path, "train.run: output_dir and data_path are required")
  local rank, world = dist.rank(), dist.world_size()
  local main = rank == 0
  local function say(...) if main then print(string.format(...)) end end
  if main then assert(os.execute("mkdir -p '" .. a.output_dir .. "'"), "train: cannot create " .. a.output_dir) end
  local ckpt = a.output_dir .. "/checkpoint.safetensors"
  local log_path = a.output_dir .. "/log.txt"
  sere.manual_seed(a.seed) -- the same seed on every rank (9)
  local device = train.device(a.device or "auto")
  if device == "cuda" and world > 1 then
    sere.cuda.set_device(dist.local_rank() % sere.cuda.device_count() + 1) -- one GPU per process
  end

  local student, teacher = R.networks(a)
  student:to(device) -- before the optimizer and the EMA pair up its parameters
  teacher:to(device)
  local loader = data.Loader({dataset = a.data_path, recipe = R.crops(a), batch_size = a.batch_size_per_gpu,
    threads = a.num_workers, seed = a.seed, rank = rank, world_size = world})
  local niter = loader:num_batches()
  if niter == 0 then error("train: the dataset holds fewer images than one batch on each rank", 0) end
  local accum = a.accum_iter
  if accum < 1 then error("train: --accum_iter must be at least 1", 0) end
  local sched = R.schedules(a, niter, world)
  local opt = optim.AdamW(optim.param_groups(student))
  local ema = optim.EMA(student, teacher)
  local k_patch = (a.shared_head or a.shared_head_teacher) and a.out_dim or a.patch_out_dim
  local state = {center = sere.zeros({1, a.out_dim}, {device = device}),
    center2 = sere.zeros({1, 1, k_patch}, {device = device})}
  local run = {student = student, teacher = teacher, optimizer = opt, state = state, cfg = a}

  local start_it = 0
  local from = resume_path(a, ckpt)
  if from then
    start_it = train.load_checkpoint(from, run)
    say("train: resumed from %s at iteration %d (epoch %d, batch %d of %d)", from, start_it, start_it // niter,
      start_it % niter + 1, niter)
  end
  if world > 1 then
    -- identical starting points (9), and SyncBatchNorm in both networks (4.7)
    dist.broadcast_module(student)
    dist.broadcast_module(teacher)
    dist.sync_batchnorm(student)
    dist.sync_batchnorm(teacher)
  end
  say("train: %d parameters in the student, %d iterations per epoch of %d images%s, %d epochs%s",
    student:num_parameters(), niter, a.batch_size_per_gpu * world,
    world > 1 and string.format(" (%d ranks of %d)", world, a.batch_size_per_gpu) or "", a.epochs,
    accum > 1 and string.format(", an optimizer step every %d iterations", accum) or "")
  say("train: on %s%s", device, device == "cuda" and (" (" .. sere.cuda.device_name() .. ")") or "")
  -- --use_fp16: the forward passes and the losses run under autocast (matrix
  -- products and attention in bf16), backward outside it, as in PyTorch; the
  -- parameters, the optimizer and the centres stay f32 (bf16 needs no loss scaling)
  local objective = R.objective
  if a.use_fp16 then
    objective = function(...) return sere.autocast(R.objective, ...) end
    say("train: mixed precision: bf16 autocast")
  end

  local losses, first_loss, last_loss = {}, nil, nil
  local total_it = a.epochs * niter
  local stop_it = a.stop_after_iters > 0 and math.min(a.stop_after_iters, total_it) or total_it
  local t_start, iters_done = sere.clock(), 0
  local function checkpoint(it)
    run.iteration, run.epoch = it, it // niter
    if main then train.save_checkpoint(ckpt, run) end
  end

  for epoch = start_it // niter, a.epochs - 1 do
    local lcfg = R.loss_config(a, epoch)
    lcfg.heads = lcfg.heads or student.backbone.heads
    lcfg.accum_iter = accum
    local first = epoch * niter < start_it and start_it % niter or 0
    local sums, n = {}, 0
    for _, k in ipairs(METERS) do sums[k] = 0 end
    local i = first
    for batch in loader:epoch(epoch, {start_batch = first + 1}) do
      batch = to_device(batch, device)
      local it = epoch * niter + i
      if it >= stop_it then break end
      local group_start, group_end = it % accum == 0, (it + 1) % accum == 0 or it + 1 == total_it
      if group_start then opt:set_lr_wd(sched.lr[it + 1], sched.wd[it + 1]) end        -- 8.4 step 1
      lcfg.update_centers = group_end
      local total, terms = objective(student, teacher, batch, state, lcfg)            -- steps 3-4
      local m = meters(total, terms, a.batch_size_per_gpu)                             -- step 6
      local own_total = m.total
      -- a non-finite loss on any rank makes the mean non-finite on all: all stop
      if world > 1 then m = mean_over_ranks(m) end
      if m.total ~= m.total or math.abs(m.total) == math.huge then                    -- step 5
        error(string.format("train: non-finite loss at step %d (epoch %d)%s: cls %g, patch %g, pixel %g, channel %g, "
          .. "total %g; %s", it, epoch, world > 1 and " on rank " .. nonfinite_ranks(own_total) or "", m.cls,
          m.patch, m.loss_attn, m.loss_attn_ffn, m.total,
          (from or it > 0 and sere.io.exists(ckpt)) and ("resume from " .. ckpt) or "no checkpoint written yet"), 0)
      end
      if accum > 1 then total = total / accum end
      total:backward()                                                                 -- step 7
      if group_end then                                                                -- step 8
        dist.average_gradients(student:parameters()) -- over ranks, before clipping (8.7)
        optim.update({optimizer = opt, student = student, ema = ema, momentum = sched.momentum[it + 1],
          clip_grad = a.clip_grad, epoch = epoch, freeze_last_layer = a.freeze_last_layer})
      end
      losses[it + 1] = m.total
      first_loss, last_loss = first_loss or m.total, m.total
      for _, k in ipairs(METERS) do sums[k] = sums[k] + m[k] end
      i, n, iters_done = i + 1, n + 1, iters_done + 1

      if main and (i % a.print_freq == 0 or i == niter) then                           -- step 9
        local elapsed = sere.clock() - t_start
        print(string.format("[%d/%d] epoch %d/%d  eta %s  %.1f img/s  cls %.4f  patch %.4f  pixel %.4f  "
          .. "channel %.4f  total %.4f  acc %.2f  lr %.3g  wd %.3g", it + 1, total_it, epoch + 1, a.epochs,
          clock_str(elapsed / iters_done * (stop_it - it - 1)), iters_done * a.batch_size_per_gpu * world / elapsed,
          m.cls, m.patch, m.loss_attn, m.loss_attn_ffn, m.total, m.acc, sched.lr[it + 1], sched.wd[it + 1]))
        io.stdout:flush()
        append_line(log_path, json({step = it + 1, epoch = epoch, cls = m.cls, patch = m.patch, loss = m.loss,
          loss_attn = m.loss_attn, loss_attn_ffn = m.loss_attn_ffn, total = m.total, acc = m.acc,
          lr = sched.lr[it + 1], wd = sched.wd[it + 1]}))
      end
      if a.saveckp_iters > 0 and (it + 1) % a.saveckp_iters == 0 and group_end and i < niter then
        checkpoint(it + 1)
      end
    end
    local it_next = epoch * niter + i
    if i == niter then
      local rec = {epoch = epoch}
      for _, k in ipairs(METERS) do rec["train_" .. k] = sums[k] / math.max(n, 1) end
      if main then append_line(log_path, json(rec)) end
      checkpoint(it_next)
      if main and a.saveckp_freq > 0 and epoch % a.saveckp_freq == 0 and epoch > 0 then
        train.save_checkpoint(string.format("%s/checkpoint%04d.safetensors", a.output_dir, epoch), run)
      end
    elseif it_next > start_it then
      checkpoint(it_next) -- stopped mid-epoch by --stop_after_iters
    end
    if it_next >= stop_it then break end
  end
  loader:close()
  dist.barrier() -- rank 0's files are complete before any rank goes on
  return {student = student, teacher = teacher, state = state, losses = losses, first_loss = first_loss,
    last_loss = last_loss, iteration = run.iteration or start_it}
end

return train
