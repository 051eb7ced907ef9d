-- attention.lua — the last block's class-token attention of every head, as
-- a picture:
--
--   sere tools/attention.lua --checkpoint CKPT IMAGE OUT.png [--which teacher] [--image_size N]
--
-- CKPT is a training checkpoint (the teacher's backbone by default) or a
-- backbone written by tools/export_backbone.lua. IMAGE is resized (shorter
-- side to N, Pillow's bicubic) and centre-cropped to N x N (method.md 13.1
-- with resize = crop); N defaults to the checkpoint's global crop size and
-- must be a multiple of its patch size. OUT.png is one row: the crop, then
-- one heat map per head of the attention of the [CLS] query to the N / p
-- squared patch keys in the last block (ViT:get_last_selfattention),
-- normalised per head to [0, 1] (its smallest weight black, its largest
-- pale yellow, through purple, red and orange), each patch drawn as a p x p
-- square, tiles 4 pixels apart.
local sere = require "sere"
local args = require "sere.args"
local eval = require "sere.eval"

local SPEC = {
  {"checkpoint", nil, "training checkpoint or exported backbone (required)", type = "string"},
  {"which", nil, "network of a checkpoint (default: teacher)", type = "string",
    choices = {"teacher", "student"}},
  {"image_size", nil, "side of the crop, a multiple of the patch size (default: the global crop size)", type = "int"},
}
local OPTS = {program = "tools/attention.lua", positional = "IMAGE OUT.png",
  description = "Draws the last block's [CLS]-to-patch attention of every head of a sere backbone."}

local GAP = 4
local BACKGROUND = {255, 255, 255}
-- The colour map: evenly spaced anchors, linear in between.
local COLOURS = sere.tensor({{0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}}, {dtype = "f32"})

local function fail(msg) args.fail(OPTS, msg) end

local cfg, positional = args.parse(arg, SPEC, OPTS)
if not cfg.checkpoint then fail("--checkpoint is required (--help lists the flags)") end
if #positional ~= 2 then
  fail(string.format("want IMAGE and OUT.png, got %d argument%s (usage: sere %s --checkpoint CKPT %s)", #positional,
    #positional == 1 and "" or "s", OPTS.program, OPTS.positional))
end
local image_path, out = positional[1], positional[2]

-- u8 [n, rows * cell, cols * cell, 3]: values v [n, rows, cols] in [0, 1]
-- through the colour map, each value a cell x cell square.
local function heat_maps(v, cell)
  local n, rows, cols = table.unpack(v:shape())
  local k = COLOURS:shape()[1]
  local t = v:reshape(n * rows * cols):mul(k - 1)
  local lower = t:floor():clamp(0, k - 2)
  local frac = (t - lower):view(-1, 1)
  local index = lower:long():add(1)
  local rgb = COLOURS:index_select(1, index) * (1 - frac) + COLOURS:index_select(1, index + 1) * frac
  rgb = rgb:add(0.5):clamp(0, 255):byte():view(n, rows, 1, cols, 1, 3)
  return rgb:expand(n, rows, cell, cols, cell, 3):reshape(n, rows * cell, cols * cell, 3)
end

local ok, err = pcall(function()
  local vit, info = eval.load_backbone(cfg.checkpoint, cfg.which)
  local p = info.patch_size
  local size = cfg.image_size or math.max(p, info.img_size // p * p)
  if size < p or size % p ~= 0 then
    error(string.format("--image_size %d is not a positive multiple of the patch size %d", size, p), 0)
  end
  local crop = eval.resize_crop(sere.image_load(image_path), size)
  local x = sere.augment_normalize(crop):view(1, 3, size, size)
  local grid = size // p
  local attention = sere.no_grad(function() return vit:get_last_selfattention(x) end) -- [1, h, T, T]
  local cls = attention:select(1, 1):select(2, 1):narrow(2, 2, grid * grid)       -- [h, N]
  local lo, hi = cls:min(2, true), cls:max(2, true)
  local normalised = (cls - lo):div((hi - lo):clamp(1e-12, math.huge)):view(info.heads, grid, grid)
  local maps = heat_maps(normalised, p)

  local tiles = 1 + info.heads
  local canvas = sere.tensor(BACKGROUND, {dtype = "u8"}):view(1, 1, 3):expand(size, tiles * size + (tiles - 1) * GAP, 3)
    :contiguous()
  canvas:narrow(2, 1, size):copy_(crop)
  for j = 1, info.heads do canvas:narrow(2, j * (size + GAP) + 1, size):copy_(maps[j]) end
  sere.image_save_png(out, canvas)
  print(string.format("attention: %s: %dx%d crop of %s and %d heads of the %s's last block (%dx%d patches of %d px); "
    .. "%dx%d pixels", out, size, size, image_path, info.heads, info.which or "exported backbone", grid, grid, p,
    canvas:shape()[2], size))
end)
if not ok then fail(err) end
