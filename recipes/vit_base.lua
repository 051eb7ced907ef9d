-- vit_base.lua — iBOT + SERE pre-training of ViT-B/16, the published
-- configuration (method.md section 11). It is recipes/vit_small.lua (the
-- same networks, crops, schedules and losses) with the ViT-B/16 command
-- line's values as defaults, so
--
--   sere recipes/vit_base.lua --data_path /data/imagenet/train --output_dir out/vit_base
--
-- is the published run, and so is the reference's command line with
-- `sere recipes/vit_base.lua` in place of `python main_sere.py`:
--
--   sere recipes/vit_base.lua --arch vit_base --out_dim 8192 --patch_out_dim 8192 --norm_last_layer true \
--     --shared_head true --teacher_temp 0.07 --warmup_teacher_temp 0.04 --warmup_teacher_patch_temp 0.04 \
--     --teacher_patch_temp 0.07 --warmup_teacher_temp_epochs 50 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 \
--     --pred_shape block --use_fp16 true --clip_grad 0.3 --freeze_last_layer 3 --lr 0.00075 --min_lr 2e-6 \
--     --warmup_epochs 10 --global_crops_scale 0.32 1 --local_crops_number 10 --local_crops_scale 0.05 0.32 \
--     --alpha 0.2 --beta 0.5 --batch_size_per_gpu 128 --epochs 100 --saveckp_freq 10 --num_workers 6 \
--     --data_path /data/imagenet/train --output_dir out/vit_base
local recipe = require "sere.recipe"

local R = recipe.load("vit_small.lua")
R.program = "recipes/vit_base.lua"
R.description = "iBOT + SERE pre-training of a ViT (published ViT-B/16 defaults)."

-- The published ViT-B/16 command line: where it departs from the argument defaults.
R.defaults = {
  arch = "vit_base", teacher_temp = 0.07, warmup_teacher_temp_epochs = 50, norm_last_layer = true,
  shared_head = true, clip_grad = 0.3, freeze_last_layer = 3, lr = 7.5e-4, min_lr = 2e-6,
  global_crops_scale = {0.32, 1.0}, local_crops_number = 10, local_crops_scale = {0.05, 0.32},
  pred_ratio = {0.0, 0.3}, pred_ratio_var = {0.0, 0.2}, alpha = 0.2, beta = 0.5, batch_size_per_gpu = 128,
  epochs = 100, saveckp_freq = 10, num_workers = 6,
}

return R:main(...)
