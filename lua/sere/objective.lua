-- sere.objective — the complete iBOT + SERE training loss of one
-- iteration (method.md sections 6.1 and 7), from a batch of crops to the
-- scalar loss, with the centre updates. Recipes call it; ablations replace
-- pieces of sere.loss and call it the same way.
--
--   local obj = require("sere.objective")
--   local total, terms = obj.compute(student, teacher, batch, state, cfg)
--
-- student / teacher: nn.MultiCrop(backbone, head). batch: global_crops
-- [G*B, 3, H, W] and local_crops [L*B, 3, h, w] (crop-major), masks bool
-- [G*B, hp, wp], grids_gg_rows / grids_gg_cols [G*B, S, S, 2],
-- grids_lg_local / grids_lg_global [G*L, B, 6, 6, 2]. state: center
-- [1, K] and center2 [1, 1, K], updated in place after the loss. cfg:
-- n_global, heads, teacher_temp and teacher_patch_temp (this epoch's),
-- student_temp (0.1), pixel_temp (0.5), channel_temp (0.1), alpha, beta,
-- lambda1 and lambda2 (1: the iBOT [CLS] and MIM weights), center_momentum
-- (0.9), sigma_global (14), sigma_local (6), and for gradient accumulation
-- accum_iter (1) and update_centers (true: the last iteration of an
-- accumulation group; until then the teacher's batch sums are accumulated
-- in state.center_accum / state.center2_accum, 7.4). Under mpirun the
-- centres' batch sums are all-reduced over the ranks (sere.dist), so every
-- rank keeps the same centres. Under sere.autocast (--use_fp16) the
-- networks' matrix products run in bf16, while the losses and the centres
-- stay f32.
local sere = require "sere"
local dist = require "sere.dist"
local loss = require "sere.loss"

local objective = {}

function objective.compute(student, teacher, batch, state, cfg)
  local g_n = cfg.n_global
  local ts = cfg.student_temp or 0.1

  -- 1. teacher on the unmasked global crops
  local t_out, t_feat, t_cls = sere.no_grad(function()
    local out = teacher.backbone(batch.global_crops, {is_local = false})
    local feat = teacher.head:features(out.tokens)
    return out, feat, teacher.head.last_layer(feat:select(2, 1))
  end)

  -- 2. student on the masked global crops, then on the local crops
  local s_out = student.backbone(batch.global_crops, {mask = batch.masks, is_local = false})
  local s_feat = student.head:features(s_out.tokens)
  local s_cls = student.head.last_layer(s_feat:select(2, 1))
  local l_out
  if batch.local_crops then
    l_out = student.backbone(batch.local_crops, {is_local = true})
    -- only the class token of a local crop reaches a loss: the head's MLP
    -- runs on it alone (the MLP is per token, so this is exact)
    local l_cls = student.head.last_layer(student.head:features(l_out.tokens:select(2, 1)))
    s_cls = sere.cat({s_cls, l_cls}, 1)
  end

  -- 3. losses, with the centres from before this iteration
  local terms = {}
  terms.cls = loss.ibot_cls_loss(t_cls, s_cls, state.center, g_n, cfg.teacher_temp, ts)
  local t_patch_mean
  terms.mim, t_patch_mean = loss.ibot_patch_loss(student.head, teacher.head, t_feat, s_feat, batch.masks,
    state.center2, cfg.teacher_patch_temp, ts)
  terms.ibot = terms.cls * (cfg.lambda1 or 1) + terms.mim * (cfg.lambda2 or 1)
  -- a relation whose weight is 0 (an ablation) is not computed at all
  local zero = sere.zeros({}, {device = terms.cls:device()})
  if cfg.alpha ~= 0 then
    terms.pixel, terms.pixel_terms = loss.pixel_loss_from_features({
      teacher_z = t_out.pixel.z, student_p = s_out.pixel.p, student_local_p = l_out and l_out.pixel.p,
      hw_global = t_out.grid, hw_local = l_out and l_out.grid, heads = cfg.heads, n_global = g_n,
      grids_gg_rows = batch.grids_gg_rows, grids_gg_cols = batch.grids_gg_cols,
      grids_lg_local = batch.grids_lg_local, grids_lg_global = batch.grids_lg_global,
      teacher_temp = cfg.pixel_temp or 0.5,
    })
  else
    terms.pixel = zero
  end
  if cfg.beta ~= 0 then
    local sg, sl = cfg.sigma_global or 14, cfg.sigma_local or 6
    local t_chan = sere.no_grad(function() return loss.channel_relation(t_out.channel.z, sg) end)
    terms.channel, terms.channel_terms = loss.channel_loss(t_chan, loss.channel_relation(s_out.channel.p, sg),
      l_out and loss.channel_relation(l_out.channel.p, sl), g_n, cfg.channel_temp or 0.1)
  else
    terms.channel = zero
  end
  local total = loss.total_loss(terms.ibot, terms.pixel, terms.channel, cfg.alpha, cfg.beta)

  -- 4. centres, from the raw teacher logits of this iteration, or of the
  -- whole accumulation group, summed over all ranks (7.4: divided by
  -- 2B * W * accum_iter)
  local m = cfg.center_momentum or 0.9
  local accum = cfg.accum_iter or 1
  -- no grad: teacher outputs; summed in f32 (bf16 logits under autocast)
  local sum, sum2 = t_cls:float():sum(1, true), t_patch_mean:float():sum(1, true)
  if accum > 1 then
    if state.center_accum then sum, sum2 = state.center_accum + sum, state.center2_accum + sum2 end
    state.center_accum, state.center2_accum = sum, sum2
  end
  if accum == 1 or cfg.update_centers ~= false then
    dist.all_reduce(sum, "sum")
    dist.all_reduce(sum2, "sum")
    local rows = t_cls:shape()[1] * accum * dist.world_size()
    loss.update_center(state.center, sum / rows, m)
    loss.update_center(state.center2, sum2 / rows, m)
    state.center_accum, state.center2_accum = nil, nil
  end

  terms.teacher_cls, terms.student_cls = t_cls, s_cls
  return total, terms
end

return objective
