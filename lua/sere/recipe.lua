-- sere.recipe — what every iBOT + SERE recipe shares: the reference
-- implementation's command-line flags (same names, same argument defaults,
-- same meanings; method.md section 11), sere's few additions, and the
-- Recipe object that lets a recipe file be run as a script or loaded as a
-- table, so an ablation reuses a recipe and replaces one piece.
--
--   -- recipes/vit_small.lua
--   local recipe = require "sere.recipe"
--   local R = recipe.Recipe("vit_small.lua", "iBOT + SERE, ViT-S/16 ...")
--   R.defaults = {arch = "vit_small", teacher_temp = 0.07, ...}  -- the published command line
--   function R.networks(a) ... end                         -- the pieces, in plain view
--   return R:main(...)                                     -- runs, unless loaded by recipe.load
--
--   -- recipes/ablations/no_channel.lua
--   local R = require("sere.recipe").load("../vit_small.lua")
--   R.defaults.beta = 0
--   return R:main(...)
local args = require "sere.args"

local recipe = {}

-- {name, argument default, help}: every flag of the reference's argument
-- parser that sere implements, with the reference's defaults (method.md 11,
-- "Argument default"). Recipes override defaults, never names or meanings.
recipe.REFERENCE_FLAGS = {
  -- model
  {"arch", "vit_small", "backbone size",
    choices = {"vit_tiny", "vit_small", "vit_base", "vit_large"}},
  {"patch_size", 16, "patch size in pixels"},
  {"out_dim", 8192, "K: prototypes of the [CLS] head"},
  {"patch_out_dim", 8192, "prototypes of the patch head (K when a head is shared)"},
  {"shared_head", false, "student: patch tokens share the [CLS] prototype layer"},
  {"shared_head_teacher", true, "teacher: patch tokens share the [CLS] prototype layer"},
  {"norm_last_layer", true, "weight-normalise the prototypes with g fixed to 1"},
  {"momentum_teacher", 0.996, "teacher EMA momentum at the start (cosine to 1)"},
  {"norm_in_head", "none", "normalisation inside the head MLP (only none is implemented)", choices = {"none", "None"}},
  {"act_in_head", "gelu", "activation inside the head MLP", choices = {"gelu"}},
  {"use_masked_im_modeling", true, "mask patches of the student's global crops (iBOT MIM)"},
  {"pred_ratio", {0.3}, "masked fraction of patches; two values: a choice between them per image"},
  {"pred_ratio_var", {0.0}, "half-width of the uniform range around each pred_ratio"},
  {"pred_shape", "block", "mask shape", choices = {"block", "rand"}},
  {"pred_start_epoch", 0, "first epoch with masking"},
  {"lambda1", 1.0, "weight of the iBOT [CLS] loss"},
  {"lambda2", 1.0, "weight of the iBOT MIM loss"},
  -- temperatures
  {"warmup_teacher_temp", 0.04, "teacher [CLS] temperature at epoch 0"},
  {"teacher_temp", 0.04, "teacher [CLS] temperature after the warm-up"},
  {"warmup_teacher_patch_temp", 0.04, "teacher patch temperature at epoch 0"},
  {"teacher_patch_temp", 0.07, "teacher patch temperature after the warm-up"},
  {"warmup_teacher_temp_epochs", 30, "epochs of the linear teacher-temperature warm-up"},
  -- optimisation
  {"use_fp16", true, "mixed precision: bf16 autocast (matrix products and attention in bf16; norms, softmaxes, "
    .. "losses, parameters and optimizer in f32)"},
  {"weight_decay", 0.04, "weight decay at the start (cosine schedule)"},
  {"weight_decay_end", 0.4, "weight decay at the end"},
  {"clip_grad", 3.0, "per-tensor gradient norm clip (0: off)"},
  {"batch_size_per_gpu", 128, "images per process and iteration"},
  {"epochs", 100, "epochs of training"},
  {"freeze_last_layer", 1, "epochs with the prototype layer frozen"},
  {"lr", 5e-4, "peak learning rate per 256 images (scaled by the total batch / 256)"},
  {"warmup_epochs", 10, "epochs of linear learning-rate warm-up"},
  {"min_lr", 1e-6, "learning rate at the end of the cosine"},
  {"optimizer", "adamw", "optimizer (only adamw is implemented)", choices = {"adamw"}},
  {"load_from", nil, "checkpoint to resume from, relative to output_dir", type = "string"},
  {"drop_path", 0.1, "stochastic depth rate of the student's last block"},
  {"accum_iter", 1, "iterations per optimizer step (gradient accumulation)"},
  -- multi-crop
  {"global_crops_number", 2, "global crops per image"},
  {"global_crops_scale", {0.14, 1.0}, "area range of the global crops"},
  {"local_crops_number", 0, "local crops per image"},
  {"local_crops_scale", {0.05, 0.4}, "area range of the local crops"},
  -- SERE
  {"overlap_size", {13, 13}, "overlap grid points of global/global relations (rows, columns)"},
  {"alpha", 1.0, "weight of the SERE pixel (spatial) relation loss"},
  {"beta", 1.0, "weight of the SERE channel relation loss"},
  {"temperature_pixel", 0.5, "teacher temperature of the pixel relation"},
  {"temperature_channel", 0.1, "teacher temperature of the channel relation"},
  -- run
  {"data_path", "/path/to/imagenet/train/", "ImageFolder tree (or a list file) of training images"},
  {"output_dir", ".", "where checkpoints and logs go"},
  {"saveckp_freq", 40, "also keep checkpointNNNN.safetensors every this many epochs"},
  {"seed", 0, "random seed"},
  {"num_workers", 10, "data loader threads"},
  {"dist_url", "env://", "how processes find each other (data-parallel runs)"},
  {"local_rank", 0, "set by launchers; the rank comes from the environment"},
}

-- sere's additions: sizes the reference fixes in code, and run control.
recipe.SERE_FLAGS = {
  {"embed_dim", 0, "sere: token width (0: from --arch)"},
  {"depth", 0, "sere: transformer blocks (0: from --arch)"},
  {"num_heads", 0, "sere: attention heads (0: from --arch)"},
  {"head_hidden_dim", 2048, "sere: hidden width of the iBOT head MLP"},
  {"bottleneck_dim", 256, "sere: bottleneck width of the iBOT head"},
  {"global_size", 224, "sere: global crop size in pixels"},
  {"local_size", 96, "sere: local crop size in pixels"},
  {"lg_size", 6, "sere: local/global overlap grid points per side"},
  {"dct_scaling", true, "sere: decode a JPEG at 1/2, 1/4 or 1/8 size (DCT scaling) when every crop allows it"},
  {"resume", nil, "sere: checkpoint to resume from, a path as given (default: output_dir/checkpoint.safetensors "
    .. "when it exists)", type = "string"},
  {"print_freq", 10, "sere: iterations between progress lines"},
  {"saveckp_iters", 0, "sere: also write checkpoint.safetensors every this many iterations (0: per epoch only)"},
  {"stop_after_iters", 0, "sere: stop after this many iterations in all, with a checkpoint (0: run to the end)"},
  {"device", "auto", "sere: where to train: cuda, cpu, or auto (cuda when a GPU is available)"},
}

--- flags(defaults[, extra]) -> the flag spec for sere.args:
--- REFERENCE_FLAGS, SERE_FLAGS, then a recipe's own `extra` flags, with
--- `defaults` (name -> value) replacing argument defaults.
function recipe.flags(defaults, extra)
  local spec = {}
  for _, list in ipairs({recipe.REFERENCE_FLAGS, recipe.SERE_FLAGS, extra or {}}) do
    for _, flag in ipairs(list) do
      local f = {}
      for k, v in pairs(flag) do f[k] = v end
      f.type = args.kind_of(flag) -- a recipe's default never changes a flag's type
      if defaults and defaults[flag[1]] ~= nil then f[2] = defaults[flag[1]] end
      spec[#spec + 1] = f
    end
  end
  if defaults then
    local known = {}
    for _, f in ipairs(spec) do known[f[1]] = true end
    for k in pairs(defaults) do
      if not known[k] then error("recipe: default for unknown flag --" .. tostring(k), 2) end
    end
  end
  return spec
end

-- ---- Recipe -------------------------------------------------------------------
local Recipe = {}
Recipe.__index = Recipe

--- Recipe(program, description) -> a recipe with empty defaults. A recipe
--- fills in defaults (flag -> value), may declare extra_flags (sere.args
--- specs of its own) and defines the pieces train.run assembles:
--- networks(a), crops(a), schedules(a, niter), loss_config(a, epoch) and
--- objective(student, teacher, batch, state, loss_cfg); `a` is the parsed
--- flag table.
function recipe.Recipe(program, description)
  return setmetatable({program = program, description = description, defaults = {}, extra_flags = {}}, Recipe)
end

-- A unique value: a recipe chunk called with it returns its Recipe.
recipe.AS_MODULE = setmetatable({}, {__name = "recipe.AS_MODULE"})

--- R:parse(argv) -> a: the command line against the flags with this
--- recipe's defaults (--help prints them and exits).
function Recipe:parse(argv)
  return args.parse(argv, recipe.flags(self.defaults, self.extra_flags),
    {program = self.program, description = self.description})
end

--- R:main(...) -> result: the last line of a recipe file. Loaded by
--- recipe.load, returns the recipe itself; run as a script, parses the
--- command line and trains (R.run, which a recipe may wrap, e.g. to make
--- its data first or to evaluate afterwards).
function Recipe:main(first, ...)
  if first == recipe.AS_MODULE then return self end
  local a = self:parse({first, ...})
  return self:run(a)
end

--- R:run(a) -> train.run's result: trains with this recipe's pieces.
function Recipe:run(a)
  return require("sere.train").run(a, self)
end

-- The directory of the Lua file that called into this module.
local function caller_dir(level)
  local src = debug.getinfo(level, "S").source
  if src:sub(1, 1) ~= "@" then return nil end
  return src:sub(2):match("^(.*)/[^/]*$") or "."
end

--- load(path) -> the Recipe of a recipe file, without running it (a
--- fresh one per call: change it freely). A relative path is tried against the calling file's directory first,
--- then against the working directory.
function recipe.load(path)
  local candidates = {path}
  local dir = path:sub(1, 1) ~= "/" and caller_dir(3)
  if dir then table.insert(candidates, 1, dir .. "/" .. path) end
  for _, p in ipairs(candidates) do
    local chunk, err = loadfile(p)
    if chunk then
      local R = chunk(recipe.AS_MODULE)
      if getmetatable(R) ~= Recipe then error("recipe.load: " .. p .. " does not end with `return R:main(...)`", 2) end
      R.path = p
      return R
    elseif not err:find("cannot open", 1, true) then
      error("recipe.load: " .. err, 2)
    end
  end
  error("recipe.load: no recipe file " .. table.concat(candidates, " or "), 2)
end

return recipe
