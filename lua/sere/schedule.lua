-- sere.schedule — the per-iteration schedules of method.md 8.3 (learning
-- rate with linear warm-up, weight decay, teacher momentum) and the
-- per-epoch teacher temperatures of 7.1. Each per-iteration schedule is a
-- plain Lua array with one value per global iteration: the value for
-- 0-based iteration `it` is `sched[it + 1]`.
--
--   local schedule = require "sere.schedule"
--   local s = schedule.training_schedules(args, #loader, world_size)
--   local lr, wd, m = s.lr[it + 1], s.wd[it + 1], s.momentum[it + 1]
local loss = require "sere.loss"

local schedule = {}

local function check_count(what, v)
  if math.type(v) ~= "integer" or v < 0 then
    error(string.format("cosine_scheduler: %s must be a non-negative integer, got %s", what, tostring(v)), 3)
  end
end

--- cosine_scheduler(base, final, epochs, niter_per_ep[, warmup_epochs[,
--- start_warmup_value]]) -> array of epochs * niter_per_ep values.
--- Warm-up: `Tw = warmup_epochs * niter_per_ep` values from
--- start_warmup_value (default 0) to exactly `base` at the last warm-up
--- iteration (numpy's linspace: start + i * step, last value exact). Then
--- `final + 0.5 * (base - final) * (1 + cos(pi * k / Tc))`, k = 0 .. Tc - 1,
--- Tc = T - Tw, so the last value is slightly above `final`.
function schedule.cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup_value)
  warmup_epochs, start_warmup_value = warmup_epochs or 0, start_warmup_value or 0
  check_count("epochs", epochs)
  check_count("niter_per_ep", niter_per_ep)
  check_count("warmup_epochs", warmup_epochs)
  local total, tw = epochs * niter_per_ep, warmup_epochs * niter_per_ep
  if tw > total then
    error(string.format("cosine_scheduler: %d warm-up epochs exceed the %d epochs", warmup_epochs, epochs), 2)
  end
  local out = {}
  if tw == 1 then
    out[1] = start_warmup_value
  elseif tw > 1 then
    local step = (base - start_warmup_value) / (tw - 1)
    for i = 0, tw - 2 do out[i + 1] = start_warmup_value + i * step end
    out[tw] = base
  end
  local tc = total - tw
  for k = 0, tc - 1 do
    out[tw + k + 1] = final + 0.5 * (base - final) * (1 + math.cos(math.pi * k / tc))
  end
  return out
end

--- scaled_lr(lr, batch_size_per_gpu[, world_size[, accum_iter]]): the
--- linear scaling rule, lr * (B * W * accum_iter) / 256 (8.3).
function schedule.scaled_lr(lr, batch_size_per_gpu, world_size, accum_iter)
  return lr * (batch_size_per_gpu * (world_size or 1) * (accum_iter or 1)) / 256
end

--- training_schedules(args, niter_per_ep[, world_size]) -> {lr, wd,
--- momentum}: the three per-iteration arrays of 8.3 from the reference's
--- argument names: lr, min_lr, batch_size_per_gpu, accum_iter (1),
--- epochs, warmup_epochs, weight_decay, weight_decay_end, momentum_teacher.
function schedule.training_schedules(args, niter_per_ep, world_size)
  for _, k in ipairs({"lr", "min_lr", "batch_size_per_gpu", "epochs", "warmup_epochs", "weight_decay",
                      "weight_decay_end", "momentum_teacher"}) do
    if type(args[k]) ~= "number" then error("training_schedules: args." .. k .. " must be a number", 2) end
  end
  local peak = schedule.scaled_lr(args.lr, args.batch_size_per_gpu, world_size, args.accum_iter)
  local e = args.epochs
  return {
    lr = schedule.cosine_scheduler(peak, args.min_lr, e, niter_per_ep, args.warmup_epochs),
    wd = schedule.cosine_scheduler(args.weight_decay, args.weight_decay_end, e, niter_per_ep),
    momentum = schedule.cosine_scheduler(args.momentum_teacher, 1, e, niter_per_ep),
  }
end

--- teacher_temperature(epoch, warmup, final, warmup_epochs[, start_epoch]):
--- this epoch's teacher temperature (7.1); the same function as
--- sere.loss.teacher_temperature.
schedule.teacher_temperature = loss.teacher_temperature

return schedule
