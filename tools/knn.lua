-- knn.lua — the weighted k-NN evaluation of a pre-trained backbone
-- (method.md 13.2) on two ImageFolder trees:
--
--   sere tools/knn.lua --checkpoint CKPT --train_dir DIR --val_dir DIR [--which teacher]
--       [--nb_knn 10 20] [--temperature 0.07] [--resize R] [--crop C] [--batch_size 64]
--
-- CKPT is a training checkpoint (the teacher's backbone by default) or a
-- backbone written by tools/export_backbone.lua. Every image goes through
-- 13.1's validation transform (shorter side resized to R with Pillow's
-- bicubic, centre crop C; C defaults to the checkpoint's global crop size,
-- R to round(C * 256 / 224)) and ImageNet's mean/std; its feature is the
-- L2-normalised class token after the final LayerNorm, the backbone in
-- evaluation mode. The train and val trees must have the same class
-- folders. Prints the number of images and classes, then per k the top-1
-- and top-5 accuracy in percent. Images are decoded one at a time on the
-- calling thread; the forward runs batch_size images at a time.
local sere = require "sere"
local args = require "sere.args"
local eval = require "sere.eval"

local SPEC = {
  {"checkpoint", nil, "training checkpoint or exported backbone (required)", type = "string"},
  {"train_dir", nil, "ImageFolder tree of the training images (required)", type = "string"},
  {"val_dir", nil, "ImageFolder tree of the validation images (required)", type = "string"},
  {"which", nil, "network of a checkpoint (default: teacher)", type = "string",
    choices = {"teacher", "student"}},
  {"nb_knn", {10, 20}, "numbers of neighbours k"},
  {"temperature", 0.07, "temperature T of the votes exp(sim / T)"},
  {"resize", nil, "shorter side before the crop (default: round(crop * 256 / 224))", type = "int"},
  {"crop", nil, "centre crop side (default: the checkpoint's global crop size)", type = "int"},
  {"batch_size", 64, "images per forward pass"},
}
local OPTS = {program = "tools/knn.lua",
  description = "Weighted k-NN classification (method.md 13.2) with a sere backbone's class-token features."}

local function fail(msg) args.fail(OPTS, msg) end

local cfg, why = args.parse(arg, SPEC, OPTS)
for _, name in ipairs({"checkpoint", "train_dir", "val_dir"}) do
  if not cfg[name] then fail("--" .. name .. " is required (--help lists the flags)") end
end
for _, name in ipairs({"resize", "crop", "batch_size"}) do
  if cfg[name] and cfg[name] < 1 then fail(string.format("--%s must be positive, got %d", name, cfg[name])) end
end
for _, k in ipairs(cfg.nb_knn) do
  if k < 1 then fail("--nb_knn values must be positive, got " .. k) end
end
if not (cfg.temperature > 0) then fail("--temperature must be positive, got " .. cfg.temperature) end

-- The class folders of both trees, which must agree name for name.
local function same_classes(train_ds, val_ds)
  local in_train, in_val, only_train, only_val = {}, {}, {}, {}
  for _, c in ipairs(train_ds.classes) do in_train[c] = true end
  for _, c in ipairs(val_ds.classes) do
    in_val[c] = true
    if not in_train[c] then only_val[#only_val + 1] = c end
  end
  for _, c in ipairs(train_ds.classes) do
    if not in_val[c] then only_train[#only_train + 1] = c end
  end
  if #only_train + #only_val > 0 then
    error(string.format("the class folders of %s and %s differ: only in the first: %s; only in the second: %s",
      cfg.train_dir, cfg.val_dir, #only_train > 0 and table.concat(only_train, ", ") or "none",
      #only_val > 0 and table.concat(only_val, ", ") or "none"), 0)
  end
end

-- Prints extraction progress to stderr at most every 10 seconds.
local function progress(what)
  local t0, last = sere.clock(), sere.clock()
  return function(done, total)
    local now = sere.clock()
    if now - last >= 10 or (done == total and now - t0 >= 10) then
      last = now
      io.stderr:write(string.format("knn: %s: %d/%d images, %.1f img/s\n", what, done, total, done / (now - t0)))
    end
  end
end

local ok, err = pcall(function()
  local vit, info = eval.load_backbone(cfg.checkpoint, cfg.which)
  local crop = cfg.crop or info.img_size
  local resize = cfg.resize or math.floor(crop * 256 / 224 + 0.5)
  if resize < crop then error(string.format("--resize %d is smaller than the crop %d", resize, crop), 0) end
  local train_ds, val_ds = sere.dataset_scan(cfg.train_dir), sere.dataset_scan(cfg.val_dir)
  same_classes(train_ds, val_ds)
  print(string.format("knn: %s (%s, embed_dim %d, depth %d, heads %d, patch %d): %d train images, %d val images, "
    .. "%d classes; resize %d, centre crop %d", cfg.checkpoint, info.which or "exported backbone", info.embed_dim,
    info.depth, info.heads, info.patch_size, #train_ds, #val_ds, train_ds.num_classes, resize, crop))
  io.stdout:flush()
  local t0 = sere.clock()
  local ftr, ltr = eval.extract(vit, train_ds, crop, {resize = resize, batch = cfg.batch_size,
    progress = progress("train")})
  local fva, lva = eval.extract(vit, val_ds, crop, {resize = resize, batch = cfg.batch_size,
    progress = progress("val")})
  local t1 = sere.clock()
  print(string.format("knn: features [%d, %d] and [%d, %d] in %.1f s (%.1f img/s)", ftr:shape()[1], ftr:shape()[2],
    fva:shape()[1], fva:shape()[2], t1 - t0, (#train_ds + #val_ds) / (t1 - t0)))
  local results = eval.knn_many(ftr, ltr, fva, lva, cfg.nb_knn, cfg.temperature, train_ds.num_classes)
  for _, r in ipairs(results) do
    print(string.format("knn: k %d, T %g: top-1 %.2f%%, top-5 %.2f%%", r.k, cfg.temperature, r.top1 * 100,
      r.top5 * 100))
  end
end)
if not ok then fail(err) end
