-- sere.eval — evaluation of a pre-trained backbone: class-token features of
-- whole images and the weighted k-NN classifier of DINO/iBOT (method.md
-- section 13.2).
--
--   local eval = require "sere.eval"
--   local ftr, ltr = eval.extract(teacher.backbone, sere.dataset_scan(train_dir), 32)
--   local fva, lva = eval.extract(teacher.backbone, sere.dataset_scan(val_dir), 32)
--   local top1 = eval.knn(ftr, ltr, fva, lva, 20, 0.07, num_classes)
local sere = require "sere"

local eval = {}

local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

-- One image as the network sees it at evaluation: the largest centred
-- square, resized to size x size (PIL-style bicubic) and normalised with
-- the ImageNet statistics, as f32 [1, 3, size, size].
local function center_view(img, size)
  local h, w = img:shape()[1], img:shape()[2]
  local side = math.min(h, w)
  local box = {(w - side) // 2, (h - side) // 2, side, side}
  local x = sere.augment_normalize(sere.augment_resize(img, box, size, size))
  return x:view(1, 3, size, size)
end

--- extract(backbone, dataset, size[, batch]) -> features [N, D], labels
--- i64 [N]: for every image of `dataset` (a sere.dataset_scan/list
--- Dataset, 1-based labels), the class token of the last block after the
--- final LayerNorm, L2-normalised, of its centred square resized to `size`
--- pixels. Runs without gradients and in evaluation mode (the backbone's
--- training flag is restored afterwards); `batch` images at a time (64).
function eval.extract(backbone, dataset, size, batch)
  batch = batch or 64
  local n = #dataset
  if n == 0 then error("eval.extract: the dataset is empty", 2) end
  local was_training = backbone.training
  backbone:eval()
  local feats, labels = {}, {}
  sere.no_grad(function()
    for first = 1, n, batch do
      local views = {}
      for i = first, math.min(n, first + batch - 1) do
        views[#views + 1] = center_view(sere.image_load(dataset:path(i)), size)
        labels[i] = dataset:label(i)
      end
      local tokens = backbone:get_intermediate_layers(sere.cat(views, 1), 1)[1]
      feats[#feats + 1] = tokens:select(2, 1):contiguous()
    end
  end)
  backbone:train(was_training ~= false)
  return sere.normalize(sere.cat(feats, 1), -1, 1e-12), sere.tensor(labels, {dtype = "i64"})
end

--- knn(train_feats, train_labels, test_feats, test_labels, k[, T[,
--- num_classes]]) -> top-1 accuracy in [0, 1]. Features [N, D] (any
--- scale: they are L2-normalised here), labels 1-based integer [N]. Each
--- test image takes its k most cosine-similar training images; each votes
--- for its class with weight exp(sim / T) (T = 0.07); the class with the
--- largest summed vote is the prediction. num_classes defaults to the
--- largest label seen. k larger than the training set is clamped.
function eval.knn(train_feats, train_labels, test_feats, test_labels, k, T, num_classes)
  T = T or 0.07
  local ntr, nte = train_feats:shape()[1], test_feats:shape()[1]
  if train_feats:dim() ~= 2 or test_feats:dim() ~= 2 or train_feats:shape()[2] ~= test_feats:shape()[2] then
    error(string.format("eval.knn: features must be [N, D] with the same D, got train %s and test %s",
      shape_str(train_feats), shape_str(test_feats)), 2)
  end
  if train_labels:numel() ~= ntr or test_labels:numel() ~= nte then
    error(string.format("eval.knn: %d train / %d test features but %d / %d labels", ntr, nte,
      train_labels:numel(), test_labels:numel()), 2)
  end
  if math.type(k) ~= "integer" or k < 1 then error("eval.knn: k must be a positive integer, got " .. tostring(k), 2) end
  k = math.min(k, ntr)
  local ytr = train_labels:reshape(ntr):long()
  num_classes = num_classes or ytr:max():item()
  return sere.no_grad(function()
    local a = sere.normalize(train_feats:float(), -1, 1e-12)
    local b = sere.normalize(test_feats:float(), -1, 1e-12)
    local sim, idx = b:matmul(a:t()):topk(k, 2)                       -- [nte, k]
    local votes = sim:div(T):exp()
    local neighbour_class = ytr:index_select(1, idx:reshape(nte * k)):reshape(nte, k)
    local scores = sere.zeros(nte, num_classes):scatter_add(2, neighbour_class, votes)
    local _, pred = scores:max(2)
    return pred:reshape(nte):eq(test_labels:reshape(nte):long()):float():mean():item()
  end)
end

return eval
