-- sere.eval — evaluation of a pre-trained backbone (method.md section 13):
-- reading the backbone out of a training checkpoint or an exported file,
-- the validation-style pre-processing of 13.1, class-token features of
-- whole images, and the weighted k-NN classifier of DINO/iBOT (13.2).
--
--   local eval = require "sere.eval"
--   local vit, info = eval.load_backbone("out/checkpoint.safetensors")   -- the teacher, eval mode
--   local opts = {resize = 256, batch = 64}
--   local ftr, ltr = eval.extract(vit, sere.dataset_scan(train_dir), 224, opts)
--   local fva, lva = eval.extract(vit, sere.dataset_scan(val_dir), 224, opts)
--   local top1, top5 = eval.knn(ftr, ltr, fva, lva, 20, 0.07, num_classes)
local sere = require "sere"
local nn = require "sere.nn"

local json = require "sere.json"

local eval = {}

local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end


-- ---- the backbone of a checkpoint or of an exported file ----------------------------------

-- The training-only parts of a backbone, left out of an exported one (10.3).
local TRAINING_ONLY = {"masked_embed", "channel_sere.", "pixel_sere.", "channel_sere_local.", "pixel_sere_local."}

local function training_only(name)
  for _, p in ipairs(TRAINING_ONLY) do
    if name == p or name:sub(1, #p) == p then return true end
  end
  return false
end

--- backbone_config(cfg[, what]) -> {arch, embed_dim, depth, heads,
--- patch_size, img_size}: the ViT's shape from a training configuration
--- (the checkpoint's "args") or an exported file's metadata (numbers may
--- be strings). Explicit embed_dim/depth/heads win over those of
--- cfg.arch (nn.VARIANTS); img_size is cfg.global_size (the training
--- crop size the positional table was made for), else cfg.img_size, else
--- 224; patch_size 16 by default. `what` names the source in errors.
function eval.backbone_config(cfg, what)
  what = what or "backbone_config"
  local variant = {}
  if cfg.arch ~= nil then
    variant = nn.VARIANTS[cfg.arch]
    if not variant then
      local names = {}
      for k in pairs(nn.VARIANTS) do names[#names + 1] = k end
      table.sort(names)
      error(string.format("%s: unknown arch '%s' (known: %s)", what, tostring(cfg.arch), table.concat(names, ", ")), 0)
    end
  end
  local function int(key, fallback)
    local v = cfg[key]
    if v == nil or tonumber(v) == 0 then v = fallback end -- the recipes' 0: "from arch"
    local n = math.tointeger(tonumber(v))
    if not n or n < 1 then
      error(string.format("%s: %s must be a positive integer, got %s%s", what, key, tostring(v),
        v == nil and " (and no arch names a ViT variant)" or ""), 0)
    end
    return n
  end
  local c = {arch = cfg.arch, embed_dim = int("embed_dim", variant.embed_dim), depth = int("depth", variant.depth),
    heads = int(cfg.num_heads ~= nil and "num_heads" or "heads", variant.heads), patch_size = int("patch_size", 16),
    img_size = int(cfg.global_size ~= nil and "global_size" or "img_size", 224)}
  if c.embed_dim ~= variant.embed_dim or c.depth ~= variant.depth or c.heads ~= variant.heads then
    c.arch = nil -- explicit sizes that are not the named variant's: no arch to claim
  end
  if c.embed_dim % c.heads ~= 0 then
    error(string.format("%s: embed_dim %d is not divisible by heads %d", what, c.embed_dim, c.heads), 0)
  end
  return c
end

--- read_backbone(path[, which]) -> tensors, info. path: a training
--- checkpoint (train.save_checkpoint) or a backbone exported by
--- tools/export_backbone.lua. From a checkpoint, `which` ("teacher", the
--- default, or "student") picks the network; its "backbone." tensors are
--- returned under the reference names of method.md 10.4 without the
--- `module.backbone.` prefix, minus the mask embedding and the four SERE
--- heads (the downstream convention of 10.3). An exported file is
--- returned as it is; `which`, if given, must match the one it was
--- exported from. info = backbone_config's fields plus which, source (the
--- checkpoint's path) and kind ("checkpoint" or "exported").
function eval.read_backbone(path, which)
  if which ~= nil and which ~= "teacher" and which ~= "student" then
    error(string.format("which must be 'teacher' or 'student', got '%s'", tostring(which)), 0)
  end
  if type(path) ~= "string" or not sere.io.exists(path) then
    error(string.format("cannot open '%s': no such file or not readable", tostring(path)), 0)
  end
  local t, meta = sere.io.load(path)
  local is_checkpoint = false
  for name in pairs(t) do
    if name:sub(1, 15) == "teacher.module." then is_checkpoint = true; break end
  end
  if is_checkpoint then
    which = which or "teacher"
    if not meta.args then
      error(path .. ": a checkpoint without the 'args' metadata (the training configuration)", 0)
    end
    local info = eval.backbone_config(json.decode(meta.args, path .. ": metadata 'args'"), path .. ": args")
    info.which, info.source, info.kind = which, path, "checkpoint"
    local prefix = which .. ".module.backbone."
    local out = {}
    for name, v in pairs(t) do
      local short = name:sub(#prefix + 1)
      if name:sub(1, #prefix) == prefix and not training_only(short) then out[short] = v end
    end
    if next(out) == nil then error(string.format("%s: no %s*.* tensors in this checkpoint", path, prefix), 0) end
    return out, info
  end
  if not t.cls_token then
    error(path .. ": not a sere checkpoint (no teacher.module.* tensors) nor an exported backbone (no cls_token)", 0)
  end
  if which and meta.which and which ~= meta.which then
    error(string.format("%s is a backbone exported from the %s; it holds no %s", path, meta.which, which), 0)
  end
  local info = eval.backbone_config(meta, path .. ": metadata")
  info.which, info.source, info.kind = meta.which, meta.source, "exported"
  return t, info
end

--- backbone_metadata(info) -> the metadata table an exported backbone
--- carries (strings): arch (when known), embed_dim, depth, heads,
--- patch_size, img_size, which, source.
function eval.backbone_metadata(info)
  return {arch = info.arch, embed_dim = tostring(info.embed_dim), depth = tostring(info.depth),
    heads = tostring(info.heads), patch_size = tostring(info.patch_size), img_size = tostring(info.img_size),
    which = info.which, source = info.source}
end

--- build_backbone(info) -> an nn.VisionTransformer of that shape without
--- the mask embedding and SERE heads (the downstream network).
function eval.build_backbone(info)
  return nn.VisionTransformer({embed_dim = info.embed_dim, depth = info.depth, heads = info.heads,
    patch_size = info.patch_size, img_size = info.img_size, sere_heads = false})
end

--- load_backbone(path[, which]) -> vit, info, tensors: read_backbone's
--- tensors loaded strictly into build_backbone(info) (any missing,
--- unexpected or mis-shaped name is an error naming it), in evaluation
--- mode, parameters frozen.
function eval.load_backbone(path, which)
  local tensors, info = eval.read_backbone(path, which)
  local vit = eval.build_backbone(info)
  local ok, err = pcall(vit.load_state_dict, vit, tensors)
  if not ok then
    error(string.format("%s: the %s backbone does not match a ViT with embed_dim %d, depth %d, heads %d, patch %d, "
      .. "img_size %d: %s", path, info.which or "exported", info.embed_dim, info.depth, info.heads, info.patch_size,
      info.img_size, tostring(err)), 0)
  end
  for _, p in ipairs(vit:parameters()) do p.requires_grad = false end
  vit:eval()
  return vit, info, tensors
end

-- ---- pre-processing ---------------------------------------------------------------------

-- Python's round() of a non-negative number: halves go to the even neighbour.
local function round_half_even(x)
  local f = math.floor(x)
  local d = x - f
  if d > 0.5 or (d == 0.5 and f % 2 == 1) then f = f + 1 end
  return math.tointeger(f)
end

--- resize_crop(img, crop[, resize = crop]) -> u8 [crop, crop, 3]: method.md
--- 13.1 on a u8 [h, w, 3] image, as torchvision's Resize(resize) +
--- CenterCrop(crop) on a PIL image: the shorter side becomes `resize`
--- (the longer floor(resize * long / short), Pillow's antialiased bicubic;
--- no resampling when the size is unchanged), then the centred crop whose
--- top-left corner is round((H - crop) / 2), round((W - crop) / 2) with
--- halves rounded to even. crop must not exceed resize. A view into the
--- resized image (not contiguous).
function eval.resize_crop(img, crop, resize)
  resize = resize or crop
  if math.type(crop) ~= "integer" or crop < 1 or math.type(resize) ~= "integer" or resize < crop then
    error(string.format("eval.resize_crop: want integers 1 <= crop <= resize, got crop %s, resize %s",
      tostring(crop), tostring(resize)), 2)
  end
  if img:dim() ~= 3 or img:shape()[3] ~= 3 then
    error("eval.resize_crop: want a u8 [h, w, 3] image, got " .. shape_str(img), 2)
  end
  local h, w = img:shape()[1], img:shape()[2]
  local nw, nh
  if w <= h then
    nw, nh = resize, math.floor(resize * h / w)
  else
    nw, nh = math.floor(resize * w / h), resize
  end
  if nw ~= w or nh ~= h then img = sere.augment_resize(img, nil, nw, nh) end
  local top, left = round_half_even((nh - crop) / 2), round_half_even((nw - crop) / 2)
  return img:narrow(1, top + 1, crop):narrow(2, left + 1, crop)
end

--- preprocess(img, crop[, resize[, out]]) -> f32 [3, crop, crop]:
--- resize_crop, then ToTensor and the ImageNet mean/std (written into
--- `out`, a contiguous f32 [3, crop, crop] tensor, when given).
function eval.preprocess(img, crop, resize, out)
  return sere.augment_normalize(eval.resize_crop(img, crop, resize), nil, nil, out)
end

-- The largest centred square, resized to size x size (extract's default view).
local function center_square(img, size, out)
  local h, w = img:shape()[1], img:shape()[2]
  local side = math.min(h, w)
  local box = {(w - side) // 2, (h - side) // 2, side, side}
  return sere.augment_normalize(sere.augment_resize(img, box, size, size), nil, nil, out)
end

-- ---- features ---------------------------------------------------------------------------

--- extract(backbone, dataset, size[, opts]) -> features [N, D], labels
--- i64 [N]: for every image of `dataset` (a sere.dataset_scan/list
--- Dataset, 1-based labels), the class token of the last block after the
--- final LayerNorm, L2-normalised. opts (or a number: the batch):
---   batch     images per forward (64)
---   resize    when given, the view is preprocess(img, size, resize)
---             (method.md 13.1); otherwise the centred square of the image
---             resized to size x size
---   progress  function(done, total) called after every batch
--- Runs without gradients and in evaluation mode (the backbone's training
--- flag is restored afterwards).
function eval.extract(backbone, dataset, size, opts)
  if type(opts) ~= "table" then opts = {batch = opts} end
  local batch = opts.batch or 64
  if math.type(batch) ~= "integer" or batch < 1 then
    error("eval.extract: batch must be a positive integer, got " .. tostring(batch), 2)
  end
  local n = #dataset
  if n == 0 then error("eval.extract: the dataset is empty", 2) end
  local was_training = backbone.training
  backbone:eval()
  local device = backbone:parameters()[1]:device() -- images go where the network is; features come back
  local feats, labels = nil, {}
  local ok, err = pcall(sere.no_grad, function()
    local views = sere.empty(batch, 3, size, size)
    for first = 1, n, batch do
      local count = math.min(batch, n - first + 1)
      for j = 1, count do
        local i = first + j - 1
        local img = sere.image_load(dataset:path(i))
        if opts.resize then
          eval.preprocess(img, size, opts.resize, views[j])
        else
          center_square(img, size, views[j])
        end
        labels[i] = dataset:label(i)
      end
      local tokens = backbone:get_intermediate_layers(views:narrow(1, 1, count):to(device), 1)[1]
      local cls = sere.normalize(tokens:select(2, 1), -1, 1e-12)
      feats = feats or sere.empty(n, cls:shape()[2])
      feats:narrow(1, first, count):copy_(cls)
      if opts.progress then opts.progress(first + count - 1, n) end
    end
  end)
  backbone:train(was_training ~= false)
  if not ok then error(err, 0) end
  return feats, sere.tensor(labels, {dtype = "i64"})
end

-- ---- the weighted k-NN classifier ------------------------------------------------------

-- Test rows per chunk: the similarity block [rows, n_train] stays near
-- 2^27 floats (512 MiB) however large the training set.
local SIM_BLOCK = 1 << 27

--- knn_many(train_feats, train_labels, test_feats, test_labels, ks[, T[,
--- num_classes]]) -> {{k =, top1 =, top5 =}, ...}, one entry per k of
--- the list ks (accuracies in [0, 1]). Features [N, D] (any scale: they
--- are L2-normalised here), labels 1-based integer [N]. Each test image
--- takes its k most cosine-similar training images (k is clamped to the
--- training set); each votes for its class with weight exp(sim / T) (T =
--- 0.07); the class with the largest summed vote is the prediction (ties:
--- the lower label). Top-5: the true class is among the 5 highest-scoring
--- classes that received a vote. num_classes defaults to the largest
--- training label. The similarities and neighbours are computed once for
--- the largest k, in chunks of test images.
function eval.knn_many(train_feats, train_labels, test_feats, test_labels, ks, T, num_classes)
  T = T or 0.07
  if train_feats:dim() ~= 2 or test_feats:dim() ~= 2 or train_feats:shape()[2] ~= test_feats:shape()[2] then
    error(string.format("eval.knn: features must be [N, D] with the same D, got train %s and test %s",
      shape_str(train_feats), shape_str(test_feats)), 2)
  end
  local ntr, nte = train_feats:shape()[1], test_feats:shape()[1]
  if train_labels:numel() ~= ntr or test_labels:numel() ~= nte then
    error(string.format("eval.knn: %d train / %d test features but %d / %d labels", ntr, nte,
      train_labels:numel(), test_labels:numel()), 2)
  end
  if type(ks) ~= "table" or #ks == 0 then error("eval.knn: ks must be a non-empty list of k values", 2) end
  local kmax = 0
  for _, k in ipairs(ks) do
    if math.type(k) ~= "integer" or k < 1 then
      error("eval.knn: k must be a positive integer, got " .. tostring(k), 2)
    end
    kmax = math.max(kmax, math.min(k, ntr))
  end
  local ytr = train_labels:reshape(ntr):long()
  num_classes = num_classes or ytr:max():item()
  local top = math.min(5, num_classes)
  local hits1, hits5 = {}, {}
  for i = 1, #ks do hits1[i], hits5[i] = 0, 0 end
  sere.no_grad(function()
    local a = sere.normalize(train_feats:float(), -1, 1e-12)
    local b_all = sere.normalize(test_feats:float(), -1, 1e-12)
    local yte_all = test_labels:reshape(nte):long()
    local rows = math.max(1, SIM_BLOCK // ntr)
    for first = 1, nte, rows do
      local n = math.min(rows, nte - first + 1)
      local sim, idx = b_all:narrow(1, first, n):matmul(a:t()):topk(kmax, 2)    -- [n, kmax], best first
      local votes = sim:div(T):exp()
      local neighbour_class = ytr:index_select(1, idx:reshape(n * kmax)):reshape(n, kmax)
      local yte = yte_all:narrow(1, first, n)
      for i, k in ipairs(ks) do
        k = math.min(k, ntr)
        local scores = sere.zeros(n, num_classes):scatter_add(2, neighbour_class:narrow(2, 1, k), votes:narrow(2, 1, k))
        local _, pred = scores:max(2)
        hits1[i] = hits1[i] + pred:reshape(n):eq(yte):sum():item()
        local best, best_class = scores:topk(top, 2)
        hits5[i] = hits5[i] + best_class:eq(yte:view(n, 1)):logical_and(best:gt(0)):sum():item()
      end
    end
  end)
  local out = {}
  for i, k in ipairs(ks) do out[i] = {k = k, top1 = hits1[i] / nte, top5 = hits5[i] / nte} end
  return out
end

--- knn(train_feats, train_labels, test_feats, test_labels, k[, T[,
--- num_classes]]) -> top-1, top-5 accuracy in [0, 1]: knn_many for one k.
function eval.knn(train_feats, train_labels, test_feats, test_labels, k, T, num_classes)
  if math.type(k) ~= "integer" or k < 1 then error("eval.knn: k must be a positive integer, got " .. tostring(k), 2) end
  local r = eval.knn_many(train_feats, train_labels, test_feats, test_labels, {k}, T, num_classes)[1]
  return r.top1, r.top5
end

return eval
