-- tiny.lua — the quick-start job: iBOT + SERE pre-training of a small ViT
-- on CPU, in a few minutes, on a labelled dataset of shapes and textures
-- that it draws itself on first use (sere.synthetic; tools/make_shapes.lua),
-- then the weighted k-NN accuracy (method.md 13.2) of the trained teacher
-- next to that of the same network at random initialisation.
--
--   sere recipes/tiny.lua [--epochs N] [--output_dir DIR] [--help]
--
-- It is recipes/vit_small.lua (the same networks, crops, schedules and
-- losses) with small sizes: a 64-wide, 3-block ViT on 8-pixel patches, 2
-- global crops of 32 px and 4 local crops of 16 px from 40 px images.
-- --data_path / --val_path point it at another ImageFolder pair instead
-- (e.g. the digits). Training resumes from output_dir/checkpoint.safetensors
-- when present. Exits 1 if the trained features do not beat random ones.
local sere = require "sere"
local recipe = require "sere.recipe"
local train = require "sere.train"
local eval = require "sere.eval"
local synthetic = require "sere.synthetic"

local R = recipe.load("vit_small.lua")
R.program = "recipes/tiny.lua"
R.description = "iBOT + SERE on a small ViT and a dataset it draws itself, then k-NN: trained vs random init."

-- Small sizes; everything not named here keeps the reference's argument default.
R.defaults = {
  arch = "vit_tiny", embed_dim = 64, depth = 3, num_heads = 4, patch_size = 8, drop_path = 0.1,
  out_dim = 128, patch_out_dim = 128, head_hidden_dim = 256, bottleneck_dim = 64, shared_head = true,
  global_crops_scale = {0.4, 1.0}, global_size = 32, local_crops_number = 4, local_crops_scale = {0.1, 0.4},
  local_size = 16, pred_ratio = {0.0, 0.3}, pred_ratio_var = {0.0, 0.2}, overlap_size = {7, 7}, lg_size = 4,
  alpha = 0.2, beta = 0.5,
  epochs = 80, batch_size_per_gpu = 32, lr = 8e-3, momentum_teacher = 0.99, min_lr = 1e-5, warmup_epochs = 2, weight_decay = 0.04,
  weight_decay_end = 0.1, teacher_temp = 0.04, teacher_patch_temp = 0.04, warmup_teacher_temp_epochs = 5,
  use_fp16 = false, print_freq = 31, saveckp_freq = 0, num_workers = 2, output_dir = "out/tiny", data_path = "",
}
R.extra_flags = {
  {"val_path", "", "tiny: ImageFolder of the k-NN query images (default: the drawn dataset's val/)"},
  {"train_per_class", 100, "tiny: training images drawn per class"},
  {"val_per_class", 30, "tiny: validation images drawn per class"},
  {"image_size", 40, "tiny: side of the drawn images in pixels"},
  {"nb_knn", 20, "tiny: neighbours of the k-NN classifier"},
}

function R:run(a)
  local t0 = sere.clock()
  local main = sere.dist.rank() == 0 -- under mpirun, rank 0 draws the data, prints and evaluates
  if a.data_path == "" then
    local root = a.output_dir .. "/data"
    if main then
      synthetic.make(root, {train_per_class = a.train_per_class, val_per_class = a.val_per_class,
        size = a.image_size, seed = a.seed})
    end
    sere.dist.barrier()
    a.data_path, a.val_path = root .. "/train", root .. "/val"
  elseif a.val_path == "" then
    error("tiny: --data_path needs --val_path (the k-NN query images)", 0)
  end
  local train_ds, val_ds = sere.dataset_scan(a.data_path), sere.dataset_scan(a.val_path)
  if main then
    print(string.format("tiny: %d training images, %d validation images in %d classes (%s)", #train_ds, #val_ds,
      train_ds.num_classes, a.data_path))
  end

  local result = train.run(a, self)
  if not main then return {result = result} end

  local function knn_top1(backbone)
    local ftr, ltr = eval.extract(backbone, train_ds, a.global_size)
    local fva, lva = eval.extract(backbone, val_ds, a.global_size)
    return (eval.knn(ftr, ltr, fva, lva, a.nb_knn, 0.07, train_ds.num_classes))
  end
  sere.manual_seed(a.seed)
  local _, random_teacher = self.networks(a) -- the same draws as the run's initial weights
  local trained, random = knn_top1(result.teacher.backbone), knn_top1(random_teacher.backbone)
  print(string.format("tiny: k-NN top-1 (k %d, T 0.07) on %d validation images: trained teacher %.1f%%, "
    .. "random init %.1f%% (chance %.1f%%); %.0f s in all", a.nb_knn, #val_ds, trained * 100, random * 100,
    100 / train_ds.num_classes, sere.clock() - t0))
  return {trained = trained, random = random, result = result}
end

local res = R:main(...)
if res ~= R and res.trained and res.trained <= res.random then
  io.stderr:write("tiny: the trained features do not beat random ones\n")
  os.exit(1)
end
return res
