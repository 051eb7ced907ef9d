-- test_recipes.lua — sere.args (the reference's command-line conventions:
-- lists, booleans, --name=value, errors with suggestions), the recipe
-- files (the published command lines parse to the recipes' defaults;
-- vit_base changes only what the ViT-B/16 command line changes), and the
-- ablations, each run for one iteration at tiny sizes to show that the
-- one piece it replaces is replaced. tests/cli/test_recipes.sh runs the
-- command lines themselves.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local args = require "sere.args"
local recipe = require "sere.recipe"
local train = require "sere.train"

local SPEC = {
  {"epochs", 100, "epochs"},
  {"lr", 5e-4, "learning rate"},
  {"norm_last_layer", true, "weight norm"},
  {"global_crops_scale", {0.14, 1.0}, "scales"},
  {"overlap_size", {13, 13}, "grid"},
  {"load_from", nil, "checkpoint", type = "string"},
  {"arch", "vit_small", "arch", choices = {"vit_small", "vit_base"}},
}

T.test("args: values, lists, booleans, --name=value, defaults", function()
  local a = assert(args.try_parse({"--epochs", "3", "--global_crops_scale", "0.4", "1", "--norm_last_layer", "false",
    "--lr=1e-3", "--arch", "vit_base"}, SPEC))
  T.eq(a.epochs, 3, "integer")
  assert(math.type(a.epochs) == "integer", "an integer flag gives a Lua integer")
  T.eq(a.lr, 1e-3, "--name=value")
  T.eq(a.norm_last_layer, false, "boolean false")
  T.eq(table.concat(a.global_crops_scale, " "), "0.4 1.0", "a list takes every value up to the next flag")
  T.eq(table.concat(a.overlap_size, " "), "13 13", "list default")
  T.eq(a.load_from, nil, "no default")
  T.eq(a.arch, "vit_base", "choice")
  for text, want in pairs({["true"] = true, on = true, ["1"] = true, ["False"] = false, off = false, ["0"] = false}) do
    T.eq(assert(args.try_parse({"--norm_last_layer", text}, SPEC)).norm_last_layer, want, "bool " .. text)
  end
  T.eq(table.concat(assert(args.try_parse({"--global_crops_scale", "0.3"}, SPEC)).global_crops_scale, " "), "0.3",
    "a list flag takes one value too")
  T.eq(assert(args.try_parse({"--lr", "-0.5"}, SPEC)).lr, -0.5, "a negative number is a value, not a flag")
  T.eq(assert(args.try_parse({"--norm_last_layer", "--epochs", "3"}, SPEC)).norm_last_layer, true,
    "a bare boolean flag sets it")
  T.eq(assert(args.try_parse({"--norm_last_layer"}, SPEC)).norm_last_layer, true, "also last")
  local b = assert(args.try_parse({}, SPEC))
  b.global_crops_scale[1] = 9
  T.eq(SPEC[4][2][1], 0.14, "defaults are copied, not shared")
end)

T.test("args: bad command lines name the problem", function()
  local function err(argv) local a, msg = args.try_parse(argv, SPEC) assert(a == nil) return msg end
  T.eq(err({"--epoch", "3"}), "unknown flag '--epoch'; did you mean --epochs? (--help lists them)", "suggestion")
  T.eq(err({"--norm_last", "false"}), "unknown flag '--norm_last'; did you mean --norm_last_layer? (--help lists them)",
    "prefix suggestion")
  T.eq(err({"--zzzzzz", "1"}), "unknown flag '--zzzzzz' (--help lists them)", "nothing close")
  T.eq(err({"--epochs", "2.5"}), "--epochs wants an integer, got '2.5'", "integer")
  T.eq(err({"--lr", "fast"}), "--lr wants a number, got 'fast'", "number")
  T.eq(err({"--norm_last_layer", "maybe"}), "--norm_last_layer wants true or false, got 'maybe'", "boolean")
  T.eq(err({"--epochs"}), "--epochs needs a value", "missing value")
  T.eq(err({"--arch", "vit_huge"}), "--arch must be one of vit_small, vit_base, got 'vit_huge'", "choices")
  T.eq(err({"stray"}), "unexpected argument 'stray' (flags start with --)", "positional not allowed")
  local _, why = args.try_parse({"--help"}, SPEC)
  T.eq(why, "help", "--help")
  local a, pos = args.try_parse({"in.png", "--epochs", "2", "out.png"}, SPEC, {positional = "IN OUT"})
  T.eq(a.epochs, 2, "flags among positionals")
  T.eq(table.concat(pos, " "), "in.png out.png", "positionals in order")
  local usage = args.usage(SPEC, {program = "x.lua"})
  assert(usage:find("--global_crops_scale +X %.%.%. +scales %[0.14 1.0%]"), usage)
  assert(usage:find("--arch +S +arch %(vit_small, vit_base%) %[vit_small%]"), usage)
end)

local small = recipe.load("recipes/vit_small.lua")
local base = recipe.load("recipes/vit_base.lua")

local function parse(R, argv) return assert(args.try_parse(argv, recipe.flags(R.defaults, R.extra_flags))) end

local function same(a, b, what)
  for k, v in pairs(a) do
    if type(v) == "table" then
      T.eq(table.concat(b[k], " "), table.concat(v, " "), what .. " --" .. k)
    else
      T.eq(b[k], v, what .. " --" .. k)
    end
  end
end

T.test("the published command lines give the recipes' defaults", function()
  same(parse(small, {}), parse(small, {"--arch", "vit_small", "--teacher_temp", "0.07", "--warmup_teacher_temp_epochs",
    "30", "--norm_last_layer", "false", "--shared_head", "true", "--clip_grad", "0.3", "--global_crops_scale", "0.40",
    "1", "--local_crops_number", "10", "--local_crops_scale", "0.05", "0.40", "--pred_ratio", "0", "0.3",
    "--pred_ratio_var", "0", "0.2", "--alpha", "0.2", "--beta", "0.5", "--batch_size_per_gpu", "128", "--epochs", "100",
    "--saveckp_freq", "10", "--num_workers", "6"}), "vit_small")
  local s, b = parse(small, {}), parse(base, {})
  -- method.md 11: ViT-B/16 departs from ViT-S/16 in exactly these
  local differs = {arch = "vit_base", warmup_teacher_temp_epochs = 50, norm_last_layer = true, freeze_last_layer = 3,
    lr = 7.5e-4, min_lr = 2e-6, global_crops_scale = "0.32 1.0", local_crops_scale = "0.05 0.32"}
  for k, v in pairs(s) do
    local w = b[k]
    if type(v) == "table" then v, w = table.concat(v, " "), table.concat(w, " ") end
    if differs[k] ~= nil then
      T.eq(w, differs[k], "vit_base --" .. k)
    else
      T.eq(w, v, "vit_base keeps --" .. k)
    end
  end
  T.eq(s.lr * 1024 / 256, 2e-3, "ViT-S peak lr at a global batch of 1024")
end)

-- ---- ablations: one iteration each at tiny sizes ---------------------------------------
local tmp = os.tmpname()
os.remove(tmp)
local root = tmp .. "_data"
local gen = sere.Generator(4)
for c = 1, 2 do
  assert(os.execute(string.format("mkdir -p %s/c%d", root, c)))
  for n = 1, 2 do
    sere.image.save_png(string.format("%s/c%d/%d.png", root, c, n), sere.rand({24, 24, 3}, {generator = gen}):mul(255):byte())
  end
end
local tiny = recipe.load("recipes/tiny.lua").defaults

local function one_iteration(path, name)
  local R = recipe.load(path)
  local a = parse(R, {})
  for k, v in pairs(tiny) do a[k] = v end
  -- what the ablation itself changes in vit_small's defaults wins over the tiny sizes
  for k, v in pairs(R.defaults) do
    if type(v) ~= "table" and v ~= small.defaults[k] then a[k] = v end
  end
  for k, v in pairs({data_path = root, output_dir = tmp .. "_" .. name, embed_dim = 16, depth = 1, num_heads = 2,
    out_dim = 16, patch_out_dim = 16, head_hidden_dim = 16, bottleneck_dim = 8, global_size = 16, local_size = 8,
    local_crops_number = 2, overlap_size = {3, 3}, lg_size = 2, batch_size_per_gpu = 4, epochs = 1,
    stop_after_iters = 1, print_freq = 100, saveckp_freq = 0}) do a[k] = v end
  local real_print = print
  print = function() end
  local ok, res = pcall(train.run, a, R)
  print = real_print
  if not ok then error(res, 0) end
  local t = sere.io.load(a.output_dir .. "/checkpoint.safetensors")
  local log = T.read_file(a.output_dir .. "/log.txt")
  return t, tonumber(log:match('"loss_attn": ([%d.e-]+)')), tonumber(log:match('"loss_attn_ffn": ([%d.e-]+)'))
end

T.test("ablations replace one piece each", function()
  local t, pixel, channel = one_iteration("recipes/vit_small.lua", "full")
  assert(pixel > 0 and channel > 0, "the full recipe has both relation losses")
  assert(t["student.module.backbone.pixel_sere.projection.0.weight"], "and the pixel relation heads")
  t, pixel, channel = one_iteration("recipes/ablations/no_channel.lua", "no_channel")
  assert(pixel > 0, "no_channel keeps the pixel loss")
  T.eq(channel, 0, "no_channel: no channel loss")
  t, pixel, channel = one_iteration("recipes/ablations/no_pixel.lua", "no_pixel")
  T.eq(pixel, 0, "no_pixel: no pixel loss")
  assert(channel > 0, "no_pixel keeps the channel loss")
  t, pixel, channel = one_iteration("recipes/ablations/pixel_on_backbone.lua", "pixel_on_backbone")
  assert(pixel > 0 and channel > 0, "pixel_on_backbone keeps both losses")
  T.eq(t["student.module.backbone.pixel_sere.projection.0.weight"], nil, "without the pixel relation heads")
  T.eq(t["teacher.module.backbone.pixel_sere_local.predictor.0.weight"], nil, "in the teacher too")
  assert(t["student.module.backbone.channel_sere.projection.0.weight"], "the channel heads stay")
end)

assert(os.execute(string.format("rm -rf %s_data %s_full %s_no_channel %s_no_pixel %s_pixel_on_backbone", tmp, tmp, tmp,
  tmp, tmp)))
T.finish()
