-- sere.optim — the optimisation step of method.md section 8: the two
-- parameter groups (8.2), AdamW with decoupled weight decay (8.1),
-- per-tensor gradient clipping (8.5), dropping the last layer's gradients
-- while it is frozen (3.5), the teacher EMA (8.8), and `update`, which runs
-- the end-of-accumulation-group steps in the order of 8.4.
--
--   local optim = require "sere.optim"
--   local opt = optim.AdamW(optim.param_groups(student))
--   local ema = optim.EMA(student, teacher)
--   opt:set_lr_wd(lr[it + 1], wd[it + 1])           -- start of the iteration
--   ... loss:backward() ...
--   optim.update{optimizer = opt, student = student, ema = ema, momentum = m[it + 1],
--                clip_grad = 0.3, epoch = epoch, freeze_last_layer = 1}
--
-- The element-wise work is fused over lists of tensors in C (ops/optim.c:
-- sere.adamw_step_, sere.ema_, sere.norms, sere.scale_): one pass over
-- memory per update, a few multi-tensor launches on CUDA.
local sere = require "sere"

local optim = {}

local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

--- param_groups(model) -> {group0, group1}: the student parameters that
--- require grad, in named_parameters order. Group 0 (decayed): names
--- ending in ".bias" and every tensor of 2 or more dims (cls_token,
--- pos_embed, masked_embed, weights, a trainable weight_g). Group 1
--- (weight_decay 0): the remaining 1-D tensors (LayerNorm/BatchNorm gains).
--- A group is {params = {...}, names = {...}, lr = 0, weight_decay = 0}.
function optim.param_groups(model)
  local groups = {{params = {}, names = {}, lr = 0, weight_decay = 0},
                  {params = {}, names = {}, lr = 0, weight_decay = 0, no_decay = true}}
  for name, p in model:named_parameters() do
    if p.requires_grad then
      local g = (name:sub(-5) == ".bias" or p:dim() >= 2) and groups[1] or groups[2]
      g.params[#g.params + 1] = p
      g.names[#g.names + 1] = name
    end
  end
  return groups
end

-- ---- AdamW -------------------------------------------------------------------
local AdamW = {}
AdamW.__index = AdamW
AdamW.__name = "AdamW"

--- optim.AdamW(groups[, {betas = {0.9, 0.999}, eps = 1e-8}]): groups as
--- from param_groups (each needs params; names default to "<group>.<i>",
--- lr and weight_decay to 0). The optimiser holds, per parameter, the
--- moments exp_avg, exp_avg_sq and its own step count, created at its
--- first actual update.
function optim.AdamW(groups, opts)
  opts = opts or {}
  local self = setmetatable({param_groups = {}, state = {}, by_name = {}}, AdamW)
  self.beta1, self.beta2 = table.unpack(opts.betas or {0.9, 0.999})
  self.eps = opts.eps or 1e-8
  for gi, g in ipairs(groups) do
    assert(type(g.params) == "table", "AdamW: group " .. gi .. " has no params list")
    local names = {}
    for i, p in ipairs(g.params) do
      if not sere.is_tensor(p) then error(string.format("AdamW: group %d param %d is not a tensor", gi, i), 2) end
      local name = g.names and g.names[i] or string.format("%d.%d", gi - 1, i)
      if self.by_name[name] then error("AdamW: parameter '" .. name .. "' appears twice", 2) end
      self.by_name[name] = p
      names[i] = name
    end
    g.names, g.lr, g.weight_decay = names, g.lr or 0, g.weight_decay or 0
    self.param_groups[gi] = g
  end
  return self
end

--- opt:set_lr_wd(lr, wd): lr for every group, wd for every group not
--- marked no_decay (8.3: the schedules write both at each iteration).
function AdamW:set_lr_wd(lr, wd)
  for _, g in ipairs(self.param_groups) do
    g.lr = lr
    if not g.no_decay then g.weight_decay = wd end
  end
end

-- A parameter's gradient as the fused ops need it: contiguous (autograd
-- may leave a transposed view there); the contiguous copy replaces p.grad
-- so in-place clipping reaches the gradient AdamW then reads.
local function contiguous_grad(p)
  local g = p.grad
  if g and not g:is_contiguous() then
    g = g:contiguous()
    p.grad = g
  end
  return g
end

--- opt:step(): updates every parameter that has a gradient; a parameter
--- without one (grad nil) is skipped entirely: no decay, no moment
--- update, its step count unchanged. One fused call per group
--- (sere.adamw_step_, torch.optim.AdamW's arithmetic, 8.1).
function AdamW:step()
  sere.no_grad(function()
    for _, g in ipairs(self.param_groups) do
      local ps, gs, ms, vs, steps = {}, {}, {}, {}, {}
      for i, p in ipairs(g.params) do
        local grad = contiguous_grad(p)
        if grad then
          local name = g.names[i]
          local s = self.state[name]
          if not s then
            s = {step = 0, exp_avg = sere.zeros_like(p), exp_avg_sq = sere.zeros_like(p)}
            self.state[name] = s
          end
          s.step = s.step + 1
          local k = #ps + 1
          ps[k], gs[k], ms[k], vs[k], steps[k] = p, grad, s.exp_avg, s.exp_avg_sq, s.step
        end
      end
      if #ps > 0 then
        sere.adamw_step_(ps, gs, ms, vs, steps,
          {lr = g.lr, weight_decay = g.weight_decay, beta1 = self.beta1, beta2 = self.beta2, eps = self.eps})
      end
    end
  end)
end

--- opt:zero_grad(): sets every optimised parameter's gradient to nil.
function AdamW:zero_grad()
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do p.grad = nil end
  end
end

--- opt:state_dict() -> tensors, metadata: tensors "<name>.exp_avg",
--- "<name>.exp_avg_sq" (copies) and "<name>.step" (i64 scalar) for every
--- parameter that has state; metadata (strings) with betas, eps and each
--- group's lr and weight_decay ("group.<g>.lr", 0-based g). Both go
--- straight to sere.io.save (prefix the names to share a file).
function AdamW:state_dict()
  local tensors = {}
  for name, s in pairs(self.state) do
    tensors[name .. ".exp_avg"] = s.exp_avg:clone()
    tensors[name .. ".exp_avg_sq"] = s.exp_avg_sq:clone()
    tensors[name .. ".step"] = sere.tensor(s.step, {dtype = "i64"})
  end
  local meta = {beta1 = string.format("%.17g", self.beta1), beta2 = string.format("%.17g", self.beta2),
    eps = string.format("%.17g", self.eps)}
  for gi, g in ipairs(self.param_groups) do
    meta[string.format("group.%d.lr", gi - 1)] = string.format("%.17g", g.lr)
    meta[string.format("group.%d.weight_decay", gi - 1)] = string.format("%.17g", g.weight_decay)
  end
  return tensors, meta
end

local function split_key(key)
  for _, field in ipairs({"exp_avg_sq", "exp_avg", "step"}) do
    if key:sub(-#field - 1) == "." .. field then return key:sub(1, -#field - 2), field end
  end
end

--- opt:load_state_dict(tensors[, metadata[, {strict = true}]]): restores
--- what state_dict wrote. A parameter with no entries starts fresh. Every
--- entry is checked before anything changes: with strict, keys naming no
--- parameter are an error; a shape mismatch or a parameter with only some
--- of its three entries is always an error.
function AdamW:load_state_dict(tensors, meta, opts)
  local strict = not (opts and opts.strict == false)
  local found, problems = {}, {}
  for key, t in pairs(tensors) do
    local name, field = split_key(key)
    local p = name and self.by_name[name]
    if not p then
      if strict then problems[#problems + 1] = "unexpected key " .. key end
    else
      found[name] = found[name] or {}
      found[name][field] = t
      if field == "step" and t:numel() ~= 1 then
        problems[#problems + 1] = key .. " must hold one number, got shape " .. shape_str(t)
      elseif field ~= "step" and shape_str(t) ~= shape_str(p) then
        problems[#problems + 1] = string.format("%s has shape %s, the parameter %s", key, shape_str(t), shape_str(p))
      end
    end
  end
  for name, f in pairs(found) do
    if not (f.exp_avg and f.exp_avg_sq and f.step) then
      problems[#problems + 1] = "incomplete state for " .. name .. " (needs exp_avg, exp_avg_sq and step)"
    end
  end
  if #problems > 0 then
    table.sort(problems)
    error("AdamW:load_state_dict: " .. table.concat(problems, "; "), 2)
  end
  self.state = {}
  for name, f in pairs(found) do
    local p = self.by_name[name]
    self.state[name] = {step = math.tointeger(f.step:item()) or f.step:item(),
      exp_avg = f.exp_avg:to(p:dtype()):to(p:device()):clone(),
      exp_avg_sq = f.exp_avg_sq:to(p:dtype()):to(p:device()):clone()}
  end
  meta = meta or {}
  self.beta1 = tonumber(meta.beta1) or self.beta1
  self.beta2 = tonumber(meta.beta2) or self.beta2
  self.eps = tonumber(meta.eps) or self.eps
  for gi, g in ipairs(self.param_groups) do
    g.lr = tonumber(meta[string.format("group.%d.lr", gi - 1)]) or g.lr
    g.weight_decay = tonumber(meta[string.format("group.%d.weight_decay", gi - 1)]) or g.weight_decay
  end
end

-- ---- gradient handling ---------------------------------------------------------

--- clip_gradients(params, clip) -> norms: per tensor (8.5), never a global
--- norm: a gradient G with n = ||G||_2 is scaled by clip / (n + 1e-6) when
--- that is < 1. Parameters without a gradient are skipped. Returns the
--- norms before clipping (array aligned with params; nil where no grad).
-- The gradients of params that have one (made contiguous), and their
-- norms keyed by the parameter's index in params (one fused call).
local function gradient_norms(params)
  local grads, at, norms = {}, {}, {}
  for i, p in ipairs(params) do
    local g = contiguous_grad(p)
    if g then grads[#grads + 1], at[#at + 1] = g, i end
  end
  local flat = sere.norms(grads)
  for k, n in ipairs(flat) do norms[at[k]] = n end
  return norms, grads, flat
end

function optim.clip_gradients(params, clip)
  local norms, grads, flat = gradient_norms(params)
  local factors = {}
  for k, n in ipairs(flat) do
    local coef = clip / (n + 1e-6)
    factors[k] = coef < 1 and coef or 1
  end
  sere.scale_(grads, factors)
  return norms
end

--- cancel_last_layer_gradients(model, epoch, freeze_last_layer): while
--- epoch < freeze_last_layer (0-based epochs), every parameter whose name
--- contains "last_layer" loses its gradient (set to nil, not zeroed), so
--- AdamW skips it entirely (3.5).
function optim.cancel_last_layer_gradients(model, epoch, freeze_last_layer)
  if epoch >= freeze_last_layer then return end
  for name, p in model:named_parameters() do
    if name:find("last_layer", 1, true) then p.grad = nil end
  end
end

-- ---- teacher EMA ----------------------------------------------------------------
local EMA = {}
EMA.__index = EMA
EMA.__name = "EMA"

--- optim.EMA(student, teacher): pairs every teacher parameter with the
--- student parameter of the same name (8.8; buffers are not included, and
--- names on one side only, like the student's masked_embed, are skipped).
--- ema.names lists the paired names; shapes must match.
function optim.EMA(student, teacher)
  local s = {}
  for name, p in student:named_parameters() do s[name] = p end
  local self = setmetatable({names = {}, student = {}, teacher = {}}, EMA)
  for name, t in teacher:named_parameters() do
    local p = s[name]
    if p then
      if shape_str(p) ~= shape_str(t) then
        error(string.format("EMA: %s has shape %s in the student and %s in the teacher", name, shape_str(p),
          shape_str(t)), 2)
      end
      local i = #self.names + 1
      self.names[i], self.student[i], self.teacher[i] = name, p, t
    end
  end
  return self
end

--- ema:update(m): theta_T <- m * theta_T + (1 - m) * theta_S for every pair
--- (one fused call, sere.ema_).
function EMA:update(m)
  sere.ema_(self.teacher, self.student, m)
end

-- ---- one update in the order of 8.4 ---------------------------------------------

local function all_finite(norms)
  for _, n in pairs(norms) do
    if n ~= n or n == math.huge then return false end
  end
  return true
end

local function optimised_params(opt)
  local out = {}
  for _, g in ipairs(opt.param_groups) do
    for _, p in ipairs(g.params) do out[#out + 1] = p end
  end
  return out
end

--- update(o) -> {stepped = bool, grad_norms = {...}}: the end of an
--- accumulation group (8.4 step 8): clip per tensor (o.clip_grad > 0),
--- drop the last layer's gradients (o.epoch < o.freeze_last_layer), the
--- AdamW step (skipped if o.skip_nonfinite and a gradient norm is inf/NaN),
--- zero the gradients, then the teacher EMA with momentum o.momentum (even
--- when the step was skipped). o: optimizer, student, ema, momentum,
--- clip_grad (0), epoch (0), freeze_last_layer (0), skip_nonfinite (false).
function optim.update(o)
  local opt, student = assert(o.optimizer, "update: optimizer"), assert(o.student, "update: student")
  local params = optimised_params(opt)
  local norms = {}
  if (o.clip_grad or 0) > 0 then
    norms = optim.clip_gradients(params, o.clip_grad)
  elseif o.skip_nonfinite then
    norms = gradient_norms(params)
  end
  optim.cancel_last_layer_gradients(student, o.epoch or 0, o.freeze_last_layer or 0)
  local stepped = not (o.skip_nonfinite and not all_finite(norms))
  if stepped then opt:step() end
  student:zero_grad()
  if o.ema then o.ema:update(assert(o.momentum, "update: momentum")) end
  return {stepped = stepped, grad_norms = norms}
end

return optim
