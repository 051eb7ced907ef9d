-- train_setup.lua — what tests/mpi/test_train.lua and the ranks it starts
-- (train_worker.lua) share: the data set, the flags of a tiny
-- recipes/vit_small.lua run, and the file each rank leaves behind.
--   local S = dofile("tests/mpi/train_setup.lua")
local sere = require "sere"
local args = require "sere.args"
local recipe = require "sere.recipe"

local S = {}

S.R = recipe.load("recipes/vit_small.lua")
S.GLOBAL_BATCH = 8 -- images per iteration over all ranks
S.IMAGES = 16      -- 2 iterations per epoch

--- make_data(root): 16 random 24x24 PNG images in 2 classes.
function S.make_data(root)
  local gen = sere.Generator(3)
  for c = 1, 2 do
    assert(os.execute(string.format("mkdir -p %s/class%d", root, c)))
    for n = 1, S.IMAGES // 2 do
      sere.image.save_png(string.format("%s/class%d/%d.png", root, c, n),
        sere.rand({24, 24, 3}, {generator = gen}):mul(255):byte())
    end
  end
end

--- config(out, data, world, extra) -> the flags: a 1-block ViT on 16 px
--- crops, 2 epochs, batch GLOBAL_BATCH / world per rank. drop_path is 0:
--- every rank draws its drop-path flags from the same default generator
--- (the same seed on every rank, method.md 9), so a rank's B draws cannot
--- be the 2B draws of one process; the test needs the two runs to compute
--- the same function.
function S.config(out, data, world, extra)
  local a = assert(args.try_parse({}, recipe.flags(S.R.defaults)))
  local tiny = {
    output_dir = out, data_path = data, seed = 5, num_workers = 1, print_freq = 1,
    embed_dim = 16, depth = 1, num_heads = 2, patch_size = 8, drop_path = 0,
    out_dim = 32, patch_out_dim = 32, head_hidden_dim = 32, bottleneck_dim = 16, norm_last_layer = true,
    global_size = 16, local_crops_number = 2, local_crops_scale = {0.1, 0.4}, local_size = 8,
    overlap_size = {3, 3}, lg_size = 2, epochs = 2, batch_size_per_gpu = S.GLOBAL_BATCH // world, lr = 0.05,
    min_lr = 1e-5, warmup_epochs = 1, momentum_teacher = 0.99, clip_grad = 3.0, teacher_temp = 0.07,
    warmup_teacher_temp_epochs = 1, use_fp16 = false, saveckp_freq = 0,
  }
  for k, v in pairs(tiny) do a[k] = v end
  for k, v in pairs(extra or {}) do a[k] = v end
  return a
end

--- save_result(path, res): a run's final student, teacher and centres and
--- its losses (1-based by iteration) as one safetensors file.
function S.save_result(path, res)
  local t = {["state.center"] = res.state.center, ["state.center2"] = res.state.center2,
             losses = sere.tensor(res.losses, {dtype = "f32"})}
  for k, v in pairs(res.student:state_dict()) do t["student." .. k] = v end
  for k, v in pairs(res.teacher:state_dict()) do t["teacher." .. k] = v end
  sere.io.save(path, t)
end

return S
