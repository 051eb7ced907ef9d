-- sere.data — SERE's multi-crop data pipeline assembled in Lua (method.md
-- section 5): the crop list as a plain table, so an ablation changes the
-- augmentation here, and a threaded loader of whole batches.
--
--   local data = require "sere.data"
--   local recipe = data.multicrop_recipe{local_crops_number = 10}
--   local loader = data.Loader{dataset = "/data/imagenet/train", recipe = recipe,
--                              batch_size = 128, seed = 0, rank = r, world_size = w}
--   for batch in loader:epoch(e) do ... end
--
-- This module extends the table `sere.data` (which already holds the C
-- dataset functions data.scan and data.list), so both names reach the same
-- functions.
local sere = require "sere"

local data = sere.data

local function pair(v, name)
  if type(v) == "number" then return {v, v} end
  assert(type(v) == "table" and #v == 2, "multicrop_recipe: " .. name .. " must be a number or a pair {a, b}")
  return {v[1], v[2]}
end

local function list(v)
  if type(v) == "number" then return {v} end
  local out = {}
  for i, x in ipairs(v) do out[i] = x end
  return out
end

-- One crop: the shared "flip and colour" part of 5.3 plus the given fields.
local function crop(size, scale, extra)
  local c = {size = size, scale = {scale[1], scale[2]}, p_flip = 0.5, p_jitter = 0.8, brightness = 0.4,
             contrast = 0.4, saturation = 0.2, hue = 0.1, p_gray = 0.2, sigma_min = 0.1, sigma_max = 2.0,
             p_solarize = 0}
  for k, v in pairs(extra) do c[k] = v end
  return c
end

--- multicrop_recipe(opts) -> pipeline table: the method's crops (5.3) from
--- recipe-style options. opts (all optional): global_crops_number (2),
--- global_crops_scale ({0.4, 1}), local_crops_number (10),
--- local_crops_scale ({0.05, 0.4}), global_size (224), local_size (96),
--- patch_size (16), pred_ratio ({0, 0.3}), pred_ratio_var ({0, 0.2}),
--- pred_shape ("block"), pred_start_epoch (0), overlap_size ({13, 13}),
--- lg_size (6), mean, std (ImageNet's), dct_scaling (true: decode a JPEG at
--- 1/2, 1/4 or 1/8 of its size when every crop box of the sample is at
--- least that many times its output size; false: full-size decodes, crops
--- byte-identical to Pillow's). Global crop 1 always blurs, crop 2
--- (and any further one) blurs with p 0.1 and solarises with p 0.2, locals
--- blur with p 0.5. The result is plain data: edit it before building a
--- Loader (e.g. recipe.global[2].p_solarize = 0).
function data.multicrop_recipe(opts)
  opts = opts or {}
  local gscale = pair(opts.global_crops_scale or {0.4, 1.0}, "global_crops_scale")
  local lscale = pair(opts.local_crops_scale or {0.05, 0.4}, "local_crops_scale")
  local gsize, lsize = opts.global_size or 224, opts.local_size or 96
  local r = {
    global = {}, ["local"] = {},
    patch_size = opts.patch_size or 16,
    pred_ratio = list(opts.pred_ratio or {0, 0.3}),
    pred_ratio_var = list(opts.pred_ratio_var or {0, 0.2}),
    pred_shape = opts.pred_shape or "block",
    pred_start_epoch = opts.pred_start_epoch or 0,
    overlap_size = pair(opts.overlap_size or {13, 13}, "overlap_size"),
    lg_size = opts.lg_size or 6,
    mean = opts.mean, std = opts.std,
    dct_scaling = opts.dct_scaling ~= false,
  }
  for g = 1, opts.global_crops_number or 2 do
    r.global[g] = crop(gsize, gscale, g == 1 and {p_blur = 1.0} or {p_blur = 0.1, p_solarize = 0.2})
  end
  for l = 1, opts.local_crops_number or 10 do r["local"][l] = crop(lsize, lscale, {p_blur = 0.5}) end
  return r
end

local Loader = {}
Loader.__index = Loader

--- Loader{dataset = ds_or_root, recipe = ..., batch_size = B, threads = n,
--- seed = s, rank = r, world_size = w, drop_last = true, shuffle = true,
--- prefetch = 2}: a threaded loader. dataset is a Dataset
--- (sere.dataset_scan / dataset_list) or the root of an ImageFolder tree;
--- rank is 0-based like torch.distributed's. threads defaults to the
--- number of cores, prefetch is the number of batches made ahead.
function data.Loader(opts)
  assert(type(opts) == "table", "data.Loader: expected an options table")
  local ds = opts.dataset
  if type(ds) == "string" then ds = sere.dataset_scan(ds) end
  local self = setmetatable({dataset = ds, recipe = opts.recipe or data.multicrop_recipe()}, Loader)
  self.core = sere.loader_new(ds, self.recipe, {
    batch_size = opts.batch_size, threads = opts.threads, seed = opts.seed, rank = opts.rank,
    world_size = opts.world_size, drop_last = opts.drop_last, shuffle = opts.shuffle, prefetch = opts.prefetch,
  })
  return self
end

--- loader:epoch(e[, opts]): iterator over the batches of epoch e (an
--- integer >= 0). opts.start_batch = k (1-based, default 1) starts at the
--- epoch's k-th batch, for a mid-epoch resume: the batches are those an
--- uninterrupted epoch yields from its k-th on, byte for byte, and the
--- samples of batches 1..k-1 are not made (k = num_batches() + 1 yields
--- nothing). Starting another epoch or closing the loader abandons this one.
function Loader:epoch(e, opts)
  local core = self.core
  core:start(e, opts and opts.start_batch)
  return function() return core:next() end
end

--- loader:num_batches(): batches per epoch for this rank.
function Loader:num_batches() return self.core:num_batches() end
--- loader:indices(e): this rank's 1-based sample indices of epoch e
--- (before drop_last), as a Lua table.
function Loader:indices(e) return self.core:indices(e) end
--- loader:bad_count(): files found unreadable so far.
function Loader:bad_count() return self.core:bad_count() end
--- loader:close(): stops the workers and frees the loader (also done by the GC).
function Loader:close() self.core:close() end

--- sample(dataset, index, epoch, seed, recipe): one sample (1-based index)
--- as a batch of size 1, made in the calling thread.
function data.sample(ds, index, epoch, seed, recipe)
  return sere.loader_sample(ds, index, epoch, seed, recipe or data.multicrop_recipe())
end

return data
