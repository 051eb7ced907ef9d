-- test_optim.lua — sere.optim and sere.schedule (method.md section 8):
-- five AdamW steps with clipping, a dropped last-layer gradient, changing
-- lr / weight decay and the teacher EMA against torch.optim.AdamW
-- (tests/data/optim/optim_ref.safetensors, from tests/reference/optim_ref.py);
-- the schedules against values worked out by hand from 8.3; the parameter
-- groups and EMA pairs of a real multi-crop model; the optimiser state
-- through sere.io.save / load.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local nn = require "sere.nn"
local optim = require "sere.optim"
local schedule = require "sere.schedule"
local loss = require "sere.loss"

-- Both sides compute AdamW in f32 with the same operation order; sere's
-- norm and fused add-with-alpha round differently by an ulp or two, and
-- Adam divides by sqrt(v), so compare at 1e-6 relative (+1e-7 absolute for
-- entries near zero).
local ATOL, RTOL = 1e-7, 1e-6

local ref, meta = sere.io.load("tests/data/optim/optim_ref.safetensors")
local NAMES = {"backbone.cls_token", "backbone.blocks.0.norm1.weight", "backbone.blocks.0.attn.qkv.weight",
  "backbone.blocks.0.attn.qkv.bias", "head.last_layer.weight_v"}

-- A module holding the given parameters under their full names.
local Holder = nn.class("Holder")
function Holder:__init(prefix, requires_grad)
  for _, n in ipairs(NAMES) do
    local t = ref[prefix .. n]:clone()
    t.requires_grad = requires_grad
    self:register_parameter(n, t)
  end
end

local function param(m, name) return m._parameters[name] end

T.test("param_groups: the reference's split of the toy names", function()
  local g = optim.param_groups(Holder("input.param.", true))
  T.eq(table.concat(g[1].names, " "),
    "backbone.cls_token backbone.blocks.0.attn.qkv.weight backbone.blocks.0.attn.qkv.bias head.last_layer.weight_v")
  T.eq(table.concat(g[2].names, " "), "backbone.blocks.0.norm1.weight")
  T.eq(g[2].no_decay, true)
end)

T.test("clip_gradients matches the reference's per-tensor clipping", function()
  local student = Holder("input.param.", true)
  local params, clipped = {}, 0
  for i, n in ipairs(NAMES) do
    params[i] = param(student, n)
    params[i].grad = ref["step0.grad." .. n]:clone()
  end
  local norms = optim.clip_gradients(params, tonumber(meta.clip))
  for i, n in ipairs(NAMES) do
    T.close(norms[i], ref["step0.grad." .. n]:norm():item(), 0, 1e-6, "norm of " .. n)
    if n:find("last_layer") then
      -- the reference dropped it after clipping: recompute by hand
      local want = ref["step0.grad." .. n] * math.min(1, 0.3 / (norms[i] + 1e-6))
      T.close(params[i].grad, want, ATOL, RTOL, n)
    else
      T.close(params[i].grad, ref["step0.clipped." .. n], ATOL, RTOL, n)
    end
    if norms[i] > 0.3 then clipped = clipped + 1 end
  end
  assert(clipped >= 2 and clipped < #NAMES, "the data must clip some tensors and leave others")
end)

T.test("AdamW + clipping + frozen last layer + EMA: 5 steps as torch", function()
  local student, teacher = Holder("input.param.", true), Holder("input.teacher.", false)
  local opt = optim.AdamW(optim.param_groups(student))
  local ema = optim.EMA(student, teacher)
  local frozen = tonumber(meta.frozen_steps)
  for k = 0, tonumber(meta.steps) - 1 do
    local s = "step" .. k .. "."
    opt:set_lr_wd(tonumber(meta[s .. "lr"]), tonumber(meta[s .. "wd"]))
    T.eq(opt.param_groups[2].weight_decay, 0, "group 1 weight decay")
    for _, n in ipairs(NAMES) do param(student, n).grad = ref[s .. "grad." .. n]:clone() end
    -- "epoch" k against freeze_last_layer = frozen: dropped while k < frozen
    local r = optim.update{optimizer = opt, student = student, ema = ema, momentum = tonumber(meta[s .. "momentum"]),
      clip_grad = tonumber(meta.clip), epoch = k, freeze_last_layer = frozen}
    assert(r.stepped)
    for _, n in ipairs(NAMES) do
      local p = param(student, n)
      assert(p.grad == nil, "gradients are zeroed after the step: " .. n)
      T.close(p, ref[s .. "param." .. n], ATOL, RTOL, s .. "param " .. n)
      T.close(param(teacher, n), ref[s .. "teacher." .. n], ATOL, RTOL, s .. "teacher " .. n)
      local st = opt.state[n]
      if ref[s .. "step." .. n] then
        T.eq(st.step, ref[s .. "step." .. n]:item(), s .. "step count of " .. n)
        T.close(st.exp_avg, ref[s .. "exp_avg." .. n], ATOL, RTOL, s .. "exp_avg " .. n)
        T.close(st.exp_avg_sq, ref[s .. "exp_avg_sq." .. n], 1e-9, RTOL, s .. "exp_avg_sq " .. n)
      else
        assert(n:find("last_layer") and k < frozen and st == nil, s .. "no state expected for " .. n)
      end
    end
  end
  T.eq(opt.state["head.last_layer.weight_v"].step, tonumber(meta.steps) - frozen, "last layer step count")
  -- the frozen tensor did not move during the freeze
  T.eq(ref["step1.param.head.last_layer.weight_v"], ref["input.param.head.last_layer.weight_v"])
end)

T.test("a step with lr 0 moves nothing but the moments; wd acts only with lr", function()
  local p = sere.randn({4, 3}, {requires_grad = true})
  local before = p:clone()
  local opt = optim.AdamW({{params = {p}}})
  opt:set_lr_wd(0, 0.4)
  p.grad = sere.randn(4, 3)
  opt:step()
  T.eq(p, before)
  T.close(opt.state["0.1"].exp_avg, p.grad * 0.1, 0, 1e-6)
  T.eq(opt.state["0.1"].step, 1)
  -- t = 1 by hand: theta (1 - lr wd) - lr * sign-like m / (sqrt(v) + eps) with bias correction
  local q = sere.tensor({2.0, -1.0}, {requires_grad = true})
  local opt2 = optim.AdamW({{params = {q}}})
  opt2:set_lr_wd(0.1, 0.5)
  q.grad = sere.tensor({0.3, -0.2})
  opt2:step()
  local function want(theta, g)
    local m, v = 0.1 * g / 0.1, 0.001 * g * g / 0.001
    return theta * (1 - 0.05) - 0.1 * m / (math.sqrt(v) + 1e-8)
  end
  T.close(q, {want(2.0, 0.3), want(-1.0, -0.2)}, 1e-6, 1e-6)
end)

T.test("update skips the step on a non-finite gradient but still runs the EMA", function()
  local student, teacher = Holder("input.param.", true), Holder("input.teacher.", false)
  local opt = optim.AdamW(optim.param_groups(student))
  opt:set_lr_wd(1e-3, 0.04)
  local ema = optim.EMA(student, teacher)
  local before = param(student, NAMES[1]):clone()
  for _, n in ipairs(NAMES) do param(student, n).grad = ref["step0.grad." .. n]:clone() end
  param(student, NAMES[3]).grad[1][1] = 1 / 0
  local r = optim.update{optimizer = opt, student = student, ema = ema, momentum = 0.5, skip_nonfinite = true}
  T.eq(r.stepped, false)
  T.eq(param(student, NAMES[1]), before)
  assert(next(opt.state) == nil, "no AdamW state after a skipped step")
  assert(param(student, NAMES[1]).grad == nil, "gradients zeroed")
  T.close(param(teacher, NAMES[1]), (ref["input.teacher." .. NAMES[1]] + before) * 0.5, 1e-7, 1e-6)
end)

-- ---- schedules --------------------------------------------------------------------

T.test("fused ops: adamw_step_, ema_, norms, scale_ against element-wise ops", function()
  local g = sere.Generator(5)
  local shapes = {{7}, {300, 301}, {3, 1, 5}}
  local p, gr, m, v = {}, {}, {}, {}
  for i, shape in ipairs(shapes) do
    p[i] = sere.randn(shape, {generator = g})
    gr[i] = sere.randn(shape, {generator = g})
    m[i] = sere.randn(shape, {generator = g}) * 0.1
    v[i] = sere.rand(shape, {generator = g}) * 0.01
  end
  local h = {lr = 1e-3, weight_decay = 0.04, beta1 = 0.9, beta2 = 0.999, eps = 1e-8}
  local want = {}
  for i = 1, #shapes do
    local step = i + 2
    local pi = p[i] * (1 - h.lr * h.weight_decay)
    local mi = m[i] * h.beta1 + gr[i] * (1 - h.beta1)
    local vi = v[i] * h.beta2 + gr[i]:square() * (1 - h.beta2)
    local denom = vi:sqrt() / math.sqrt(1 - h.beta2 ^ step) + h.eps
    want[i] = {pi - mi / denom * (h.lr / (1 - h.beta1 ^ step)), mi, vi}
  end
  sere.adamw_step_(p, gr, m, v, {3, 4, 5}, h)
  for i = 1, #shapes do
    T.close(p[i], want[i][1], ATOL, RTOL, "param " .. i)
    T.close(m[i], want[i][2], ATOL, RTOL, "exp_avg " .. i)
    T.close(v[i], want[i][3], ATOL, RTOL, "exp_avg_sq " .. i)
  end
  local teacher = {p[1]:clone(), p[2]:clone()}
  sere.ema_(teacher, {gr[1], gr[2]}, 0.996)
  T.close(teacher[2], p[2] * 0.996 + gr[2] * 0.004, ATOL, RTOL, "ema")
  local norms = sere.norms(gr)
  for i = 1, #shapes do T.close(norms[i], gr[i]:norm():item(), 0, 1e-6, "norm " .. i) end
  local before = gr[2]:clone()
  sere.scale_(gr, {1, 0.5, 1})
  T.close(gr[2], before * 0.5, 0, 0, "scale")
  T.raises(function() sere.adamw_step_({p[1]}, {gr[2]}, {m[1]}, {v[1]}, {1}, h) end, "shape")
  T.raises(function() sere.adamw_step_({p[1]}, {gr[1]}, {m[1]}, {v[1]}, {0}, h) end, "step count")
  T.raises(function() sere.ema_({p[2]:t()}, {gr[2]}, 0.9) end, "contiguous f32")
  T.raises(function() sere.norms({p[1]:to("bf16")}) end, "contiguous f32")
  T.raises(function() sere.scale_({p[1]}, {1, 2}) end, "must have 1 numbers")
  T.raises(function() sere.adamw_step_({p[1]}, {gr[1]}, {m[1]}, {v[1]}, {1}, {lr = 1}) end, "weight_decay")
end)

T.test("cosine_scheduler: a tiny case by hand", function()
  local s = schedule.cosine_scheduler(1, 0, 2, 3, 1)
  T.eq(#s, 6)
  local want = {0, 0.5, 1, 1, 0.75, 0.25} -- warm-up 0 .. 1 over 3; cos(0), cos(pi/3), cos(2pi/3)
  for i = 1, 6 do T.close(s[i], want[i], 1e-15, 0, "value " .. i) end
  local w = schedule.cosine_scheduler(1, 0, 2, 3, 1, 0.2)
  T.close(w[1], 0.2, 0, 0); T.close(w[2], 0.6, 1e-15, 0); T.eq(w[3], 1)
  T.eq(#schedule.cosine_scheduler(1, 0, 2, 3, 2), 6)
  T.raises(function() schedule.cosine_scheduler(1, 0, 2, 3, 3) end, "warm%-up epochs exceed")
  T.raises(function() schedule.cosine_scheduler(1, 0, 2.5, 3) end, "epochs must be a non%-negative integer")
end)

T.test("ViT-S schedules (8.3): lr warm-up from exactly 0 to the peak, wd, momentum", function()
  local I, E = 1251, 100
  local args = {lr = 5e-4, min_lr = 1e-6, batch_size_per_gpu = 128, epochs = E, warmup_epochs = 10,
    weight_decay = 0.04, weight_decay_end = 0.4, momentum_teacher = 0.996}
  T.eq(schedule.scaled_lr(5e-4, 128, 8), 2e-3)
  T.close(schedule.scaled_lr(7.5e-4, 128, 8), 3e-3, 1e-18, 1e-15)
  T.eq(schedule.scaled_lr(5e-4, 64, 8, 2), 2e-3)
  local s = schedule.training_schedules(args, I, 8)
  local total, tw = E * I, 10 * I
  T.eq(#s.lr, total); T.eq(#s.wd, total); T.eq(#s.momentum, total)
  T.eq(s.lr[1], 0, "first iteration lr is exactly 0")
  T.eq(s.lr[tw], 2e-3, "peak at the last warm-up iteration")
  T.close(s.lr[5001], 2e-3 * 5000 / (tw - 1), 1e-18, 1e-14)
  T.close(s.lr[tw + 1], 2e-3, 1e-18, 1e-14)
  assert(s.lr[tw] > s.lr[tw - 1] and s.lr[tw + 2] < s.lr[tw + 1])
  local tc = total - tw
  T.close(s.lr[total], 1e-6 + 0.5 * (2e-3 - 1e-6) * (1 + math.cos(math.pi * (tc - 1) / tc)), 1e-18, 1e-12)
  assert(s.lr[total] > 1e-6 and s.lr[total] < 1e-6 + 1e-12, "last lr slightly above min_lr")
  T.close(s.wd[1], 0.04, 1e-16, 0)
  for _, it in ipairs({1, 62550, total - 1}) do
    T.close(s.wd[it + 1], 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * it / total)), 1e-15, 0, "wd")
    T.close(s.momentum[it + 1], 1 - 0.002 * (1 + math.cos(math.pi * it / total)), 1e-15, 0, "momentum")
  end
  T.close(s.momentum[1], 0.996, 1e-16, 0)
  T.close(s.wd[62551], 0.22, 1e-15, 0); T.close(s.momentum[62551], 0.998, 1e-15, 0)
  T.raises(function() schedule.training_schedules({lr = 1}, I) end, "args.min_lr")
end)

T.test("teacher temperature per epoch (7.1) is sere.loss's", function()
  assert(schedule.teacher_temperature == loss.teacher_temperature)
  T.eq(schedule.teacher_temperature(0, 0.04, 0.07, 30), 0.04)
  T.close(schedule.teacher_temperature(29, 0.04, 0.07, 30), 0.07, 1e-15, 0)
  T.close(schedule.teacher_temperature(15, 0.04, 0.07, 30), 0.04 + 0.03 * 15 / 29, 1e-15, 0)
  T.eq(schedule.teacher_temperature(80, 0.04, 0.07, 30), 0.07)
  T.eq(schedule.teacher_temperature(2, 0.04, 0.07, 30, 3), 0.04)
  T.close(schedule.teacher_temperature(4, 0.04, 0.07, 30, 3), 0.04 + 0.03 / 29, 1e-15, 0)
end)

-- ---- a real model --------------------------------------------------------------

local function tiny(student, norm_last_layer)
  local vit = nn.VisionTransformer({embed_dim = 32, depth = 1, heads = 2, patch_size = 16, img_size = 32,
    masked_im_modeling = student})
  return nn.MultiCrop(vit, nn.IbotHead(32, 64, {hidden_dim = 32, bottleneck_dim = 16,
    norm_last_layer = norm_last_layer}))
end

local function group_of(groups)
  local where = {}
  for gi, g in ipairs(groups) do
    for _, n in ipairs(g.names) do
      assert(where[n] == nil, n .. " in two groups")
      where[n] = gi - 1
    end
  end
  return where
end

T.test("param_groups on a multi-crop ViT + iBOT head (8.2)", function()
  local net = tiny(true, true)
  local where = group_of(optim.param_groups(net))
  local decayed = {"backbone.cls_token", "backbone.pos_embed", "backbone.masked_embed",
    "backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias", "backbone.blocks.0.norm1.bias",
    "backbone.blocks.0.attn.qkv.bias", "backbone.blocks.0.mlp.fc2.weight", "backbone.norm.bias",
    "backbone.pixel_sere.projection.0.bias", "backbone.channel_sere_local.predictor.0.weight",
    "backbone.channel_sere.predictor.1.bias", "head.mlp.4.bias", "head.last_layer.weight_v"}
  for _, n in ipairs(decayed) do T.eq(where[n], 0, n) end
  local plain = {"backbone.blocks.0.norm1.weight", "backbone.blocks.0.norm2.weight", "backbone.norm.weight",
    "backbone.pixel_sere.projection.0.weight", "backbone.channel_sere.predictor.1.weight",
    "backbone.pixel_sere_local.predictor.1.weight"}
  for _, n in ipairs(plain) do T.eq(where[n], 1, n) end
  T.eq(where["head.last_layer.weight_g"], nil, "frozen weight_g (norm_last_layer) is not optimised")
  T.eq(where["head.last_layer2.weight_v"], nil, "the shared layer appears once")
  local n, trainable = 0, 0
  for _ in pairs(where) do n = n + 1 end
  for _, p in net:named_parameters() do if p.requires_grad then trainable = trainable + 1 end end
  T.eq(n, trainable, "every trainable parameter in exactly one group")
  -- a trainable weight_g (norm_last_layer false) is [K, 1]: decayed
  T.eq(group_of(optim.param_groups(tiny(true, false)))["head.last_layer.weight_g"], 0)
  -- a parameter switched off is left out
  net.backbone.norm.weight.requires_grad = false
  T.eq(group_of(optim.param_groups(net))["backbone.norm.weight"], nil)
end)

T.test("EMA pairs (8.8): every teacher parameter but no masked_embed; values", function()
  local student, teacher = tiny(true, true), tiny(false, true)
  local ema = optim.EMA(student, teacher)
  local names = {}
  for _, n in ipairs(ema.names) do names[n] = true end
  local count = 0
  for n in teacher:named_parameters() do
    assert(names[n], "teacher parameter not averaged: " .. n)
    count = count + 1
  end
  T.eq(#ema.names, count)
  assert(names["head.last_layer.weight_g"] and names["backbone.pixel_sere_local.predictor.0.weight"])
  assert(not names["backbone.masked_embed"])
  for n in teacher:named_buffers() do assert(not names[n], "buffer averaged: " .. n) end
  local s_w, t_w = student.head.mlp:get(1).weight, teacher.head.mlp:get(1).weight
  local want = t_w * 0.99 + s_w * 0.01
  ema:update(0.99)
  T.close(t_w, want, 1e-7, 1e-6)
  T.raises(function() optim.EMA(tiny(true, true), nn.MultiCrop(nn.VisionTransformer({embed_dim = 16, depth = 1,
    heads = 2, patch_size = 16, img_size = 32}), nn.IbotHead(16, 64))) end, "EMA: backbone.cls_token has shape")
end)

T.test("cancel_last_layer_gradients: nil while epoch < freeze_last_layer", function()
  local net = tiny(true, false)
  local function fill()
    for _, p in net:named_parameters() do if p.requires_grad then p.grad = sere.ones(table.unpack(p:shape())) end end
  end
  fill()
  optim.cancel_last_layer_gradients(net, 0, 1)
  assert(net.head.last_layer.weight_v.grad == nil and net.head.last_layer.weight_g.grad == nil)
  assert(net.head.mlp:get(1).weight.grad ~= nil)
  fill()
  optim.cancel_last_layer_gradients(net, 1, 1)
  assert(net.head.last_layer.weight_v.grad ~= nil)
end)

-- ---- state round trip ------------------------------------------------------------

T.test("optimizer state through sere.io.save / load resumes exactly", function()
  local function run(net, opt, steps, seed)
    local gen = sere.Generator(seed)
    for k = 1, steps do
      opt:set_lr_wd(1e-3 * k, 0.04 * k)
      for _, p in net:named_parameters() do
        if p.requires_grad then
          p.grad = sere.randn(p:shape(), {generator = gen}) * 0.1
        end
      end
      optim.cancel_last_layer_gradients(net, k == 1 and 0 or 1, 1)
      opt:step()
      net:zero_grad()
    end
  end
  local a = tiny(true, true)
  local opt_a = optim.AdamW(optim.param_groups(a))
  run(a, opt_a, 2, 1)
  local path = os.tmpname()
  local tensors, m = opt_a:state_dict()
  sere.io.save(path, tensors, m)
  T.eq(tensors["head.last_layer.weight_v.step"]:item(), 1, "last layer stepped once")
  T.eq(tensors["head.last_layer.weight_v.step"]:dtype(), "i64")
  local b = tiny(true, true)
  b:load_state_dict(a:state_dict())
  local opt_b = optim.AdamW(optim.param_groups(b))
  local lt, lm = sere.io.load(path)
  os.remove(path)
  opt_b:load_state_dict(lt, lm)
  T.eq(opt_b.param_groups[1].lr, opt_a.param_groups[1].lr)
  T.eq(opt_b.param_groups[1].weight_decay, opt_a.param_groups[1].weight_decay)
  T.eq(opt_b.param_groups[2].weight_decay, 0)
  for n, s in pairs(opt_a.state) do
    T.eq(opt_b.state[n].step, s.step, n)
    T.eq(opt_b.state[n].exp_avg, s.exp_avg, n)
    T.eq(opt_b.state[n].exp_avg_sq, s.exp_avg_sq, n)
  end
  -- the same gradients on both sides from here: bit-identical parameters
  run(a, opt_a, 2, 7); run(b, opt_b, 2, 7)
  local sb = b:state_dict()
  for n, t in pairs(a:state_dict()) do T.eq(sb[n], t, n) end
end)

T.test("load_state_dict rejects bad state before changing anything", function()
  local p = sere.randn({2, 3}, {requires_grad = true})
  local opt = optim.AdamW({{params = {p}, names = {"w"}}})
  opt:set_lr_wd(0.1, 0)
  p.grad = sere.ones(2, 3)
  opt:step()
  local good = opt:state_dict()
  local bad = {["w.exp_avg"] = sere.zeros(3, 2), ["w.exp_avg_sq"] = sere.zeros(2, 3), ["w.step"] = sere.tensor(1)}
  T.raises(function() opt:load_state_dict(bad) end, "w.exp_avg has shape %[3, 2%], the parameter %[2, 3%]")
  T.raises(function() opt:load_state_dict({["w.exp_avg"] = sere.zeros(2, 3)}) end, "incomplete state for w")
  local extra = {["v.exp_avg"] = sere.zeros(1)}
  for k, v in pairs(good) do extra[k] = v end
  T.raises(function() opt:load_state_dict(extra) end, "unexpected key v.exp_avg")
  T.eq(opt.state.w.step, 1, "state unchanged after the errors")
  opt:load_state_dict(extra, nil, {strict = false})
  T.eq(opt.state.w.step, 1)
  T.raises(function() optim.AdamW({{params = {p, p}, names = {"a", "a"}}}) end, "appears twice")
end)

T.finish()
