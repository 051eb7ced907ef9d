-- vit_small.lua — iBOT + SERE pre-training of ViT-S/16, the published
-- configuration (method.md section 11): 2 global crops of 224 px and 10
-- local crops of 96 px per image, block masks on the global crops, the
-- iBOT [CLS] and MIM losses plus the SERE pixel and channel relation
-- losses, 100 epochs. Every flag of the reference command line is accepted
-- with the same name and meaning; the defaults below are the published
-- ViT-S/16 run, so
--
--   sere recipes/vit_small.lua --data_path /data/imagenet/train --output_dir out/vit_small
--
-- is that run, and so is the reference's own command line with `sere
-- recipes/vit_small.lua` in place of `python main_sere.py`:
--
--   sere recipes/vit_small.lua --arch vit_small --teacher_temp 0.07 --warmup_teacher_temp_epochs 30 \
--     --norm_last_layer false --shared_head true --clip_grad 0.3 --global_crops_scale 0.40 1 \
--     --local_crops_number 10 --local_crops_scale 0.05 0.40 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 \
--     --alpha 0.2 --beta 0.5 --batch_size_per_gpu 128 --epochs 100 --saveckp_freq 10 --num_workers 6 \
--     --data_path /data/imagenet/train --output_dir out/vit_small
--
-- `--help` lists every flag with its default. The file below is the whole
-- recipe: networks, crops, schedules and loss weights; other recipes
-- (vit_base.lua, tiny.lua, ablations/) load it and replace one piece.
local nn = require "sere.nn"
local data = require "sere.data"
local loss = require "sere.loss"
local objective = require "sere.objective"
local recipe = require "sere.recipe"
local schedule = require "sere.schedule"

local R = recipe.Recipe("recipes/vit_small.lua", "iBOT + SERE pre-training of a ViT (published ViT-S/16 defaults).")

-- The published ViT-S/16 command line: where it departs from the argument defaults.
R.defaults = {
  arch = "vit_small", teacher_temp = 0.07, warmup_teacher_temp_epochs = 30, norm_last_layer = false,
  shared_head = true, clip_grad = 0.3, global_crops_scale = {0.40, 1.0}, local_crops_number = 10,
  local_crops_scale = {0.05, 0.40}, pred_ratio = {0.0, 0.3}, pred_ratio_var = {0.0, 0.2}, alpha = 0.2, beta = 0.5,
  batch_size_per_gpu = 128, epochs = 100, saveckp_freq = 10, num_workers = 6,
}

--- networks(a) -> student, teacher: a ViT with the four SERE relation heads
--- and an iBOT head each (method 2-4). The student masks patches and drops
--- paths; the teacher starts as the student's copy and is only ever
--- updated by the EMA.
function R.networks(a)
  local function network(is_student)
    local vit = nn.VisionTransformer({arch = a.arch, embed_dim = a.embed_dim > 0 and a.embed_dim or nil,
      depth = a.depth > 0 and a.depth or nil, heads = a.num_heads > 0 and a.num_heads or nil,
      patch_size = a.patch_size, img_size = a.global_size,
      masked_im_modeling = is_student and a.use_masked_im_modeling,
      drop_path_rate = is_student and a.drop_path or 0})
    local head = nn.IbotHead(vit.embed_dim, a.out_dim, {hidden_dim = a.head_hidden_dim, bottleneck_dim = a.bottleneck_dim,
      patch_out_dim = a.patch_out_dim, shared_head = is_student and a.shared_head or a.shared_head_teacher,
      norm_last_layer = a.norm_last_layer or not is_student})
    return nn.MultiCrop(vit, head)
  end
  local student, teacher = network(true), network(false)
  teacher:load_state_dict(student:state_dict(), {strict = false}) -- the student's mask embedding stays behind
  for _, p in ipairs(teacher:parameters()) do p.requires_grad = false end
  return student, teacher
end

--- crops(a) -> the multi-crop pipeline (method 5): global crops (224 px;
--- the first always blurred, the second blurred with p 0.1 and solarised
--- with p 0.2), local crops (96 px, blurred with p 0.5), flips, colour
--- jitter and grey scale on all, block masks on the globals, overlap grids.
function R.crops(a)
  return data.multicrop_recipe({global_crops_number = a.global_crops_number, global_crops_scale = a.global_crops_scale,
    local_crops_number = a.local_crops_number, local_crops_scale = a.local_crops_scale, global_size = a.global_size,
    local_size = a.local_size, patch_size = a.patch_size,
    pred_ratio = a.use_masked_im_modeling and a.pred_ratio or {0}, pred_ratio_var = a.pred_ratio_var,
    pred_shape = a.pred_shape, pred_start_epoch = a.pred_start_epoch, overlap_size = a.overlap_size,
    lg_size = a.lg_size, dct_scaling = a.dct_scaling})
end

--- schedules(a, niter, world) -> per-iteration lr, wd and teacher momentum
--- (method 8.3): lr warms up linearly to lr x total batch / 256, then a
--- cosine to min_lr; weight decay and momentum follow cosines.
function R.schedules(a, niter, world)
  local e = a.epochs
  return {
    lr = schedule.cosine_scheduler(schedule.scaled_lr(a.lr, a.batch_size_per_gpu, world, a.accum_iter), a.min_lr, e,
      niter, math.min(a.warmup_epochs, e)),
    wd = schedule.cosine_scheduler(a.weight_decay, a.weight_decay_end, e, niter),
    momentum = schedule.cosine_scheduler(a.momentum_teacher, 1, e, niter),
  }
end

--- loss_config(a, epoch) -> the objective's settings for one epoch (method
--- 7): teacher temperatures warm up per epoch; the iBOT loss weighs
--- (4 - alpha - beta) / 2, the pixel relation alpha, the channel relation beta.
function R.loss_config(a, epoch)
  return {
    n_global = a.global_crops_number, alpha = a.alpha, beta = a.beta, lambda1 = a.lambda1, lambda2 = a.lambda2,
    teacher_temp = loss.teacher_temperature(epoch, a.warmup_teacher_temp, a.teacher_temp, a.warmup_teacher_temp_epochs),
    teacher_patch_temp = loss.teacher_temperature(epoch, a.warmup_teacher_patch_temp, a.teacher_patch_temp,
      a.warmup_teacher_temp_epochs),
    student_temp = 0.1, pixel_temp = a.temperature_pixel, channel_temp = a.temperature_channel,
    center_momentum = 0.9,
    -- sigma^2 = patches of a crop: 14^2 at 224 px, 6^2 at 96 px (the reference
    -- hard-wires 14 and 6; the same at the published crop sizes)
    sigma_global = a.global_size // a.patch_size, sigma_local = a.local_size // a.patch_size,
  }
end

-- One iteration's loss (method 6-7); ablations replace it or its parts.
R.objective = objective.compute

return R:main(...)
