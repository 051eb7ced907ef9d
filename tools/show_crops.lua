-- show_crops.lua — a contact sheet of one image's multi-crop sample, to check
-- the pipeline by eye:
--
--   sere tools/show_crops.lua IMAGE out.png [seed]
--
-- Top row: the image (scaled to a long side of 448 pixels) with every crop's box
-- (global crop 1 red, global crop 2 blue and 2 pixels inside its box,
-- locals green), then global crops 1
-- and 2 (224). Bottom row: the 10 local crops (96). Each crop has a frame in
-- its own colour, and inside it the region it shares with global crop 1
-- (red outline) and global crop 2 (blue outline, drawn 2 pixels inside the
-- region so that both show where they coincide), from the extent of the
-- overlap grids (method.md 5.6). The global crops' masked 16x16 patches
-- are darkened.
-- Crops are shown after augmentation and before normalisation; the sample is
-- the one data.sample(dataset, 1, 0, seed) makes when IMAGE is sample 1
-- (with the recipe's default DCT scaling: a large JPEG is decoded at a
-- reduced size when every crop allows it, as the loader does).
local sere = require "sere"
local data = require "sere.data"

local path, out, seed = arg[1], arg[2], math.tointeger(tonumber(arg[3] or "0"))
if not path or not out or not seed then
  io.stderr:write("usage: sere tools/show_crops.lua IMAGE out.png [seed]\n")
  os.exit(1)
end

local RED, BLUE, GREEN, GREY = {230, 40, 40}, {40, 90, 255}, {40, 200, 60}, {40, 40, 40}
local PAD = 8

local recipe = data.multicrop_recipe()
local G, L = #recipe.global, #recipe["local"]
local img = sere.image_load(path)
local H, W = img:shape()[1], img:shape()[2]

-- Fills canvas[y0, y1) x [x0, x1) (0-based pixels, clipped) with a colour.
local function fill(canvas, x0, y0, x1, y1, colour)
  local ch, cw = canvas:shape()[1], canvas:shape()[2]
  x0, y0, x1, y1 = math.max(x0, 0), math.max(y0, 0), math.min(x1, cw), math.min(y1, ch)
  if x1 <= x0 or y1 <= y0 then return end
  canvas:narrow(1, y0 + 1, y1 - y0):narrow(2, x0 + 1, x1 - x0):copy_(sere.tensor(colour))
end

-- A rectangle outline of thickness t just inside [x0, x1) x [y0, y1).
local function outline(canvas, x0, y0, x1, y1, colour, t)
  fill(canvas, x0, y0, x1, y0 + t, colour)
  fill(canvas, x0, y1 - t, x1, y1, colour)
  fill(canvas, x0, y0, x0 + t, y1, colour)
  fill(canvas, x1 - t, y0, x1, y1, colour)
end

local function paste(canvas, tile, x, y)
  canvas:narrow(1, y + 1, tile:shape()[1]):narrow(2, x + 1, tile:shape()[2]):copy_(tile)
end

-- The crops, their mappings (x, y, w, h, flip) as [1, 5] tensors, and the
-- global crops' masks, on the loader's streams for sample 1 of epoch 0.
local crops, maps, colours = {}, {}, {}
for c = 1, G + L do
  local rc = c <= G and recipe.global[c] or recipe["local"][c - G]
  local crop, p = sere.augment_crop(img, rc, {seed = seed, epoch = 0, sample = 0, crop = c - 1})
  crops[c] = crop
  maps[c] = sere.tensor({{p.box[1], p.box[2], p.box[3], p.box[4], p.flip and 1 or 0}})
  colours[c] = c == 1 and RED or c == 2 and BLUE or GREEN
end
local patch = recipe.patch_size
for g = 1, G do
  local hp = recipe.global[g].size // patch
  local mask = sere.augment_block_mask(hp, hp, {mean = recipe.pred_ratio, var = recipe.pred_ratio_var},
                                       {seed = seed, epoch = 0, sample = 0, crop = G + L + g - 1})
  local m = mask:totable()
  for r = 1, hp do
    for c = 1, hp do
      if m[r][c] then
        local cell = crops[g]:narrow(1, (r - 1) * patch + 1, patch):narrow(2, (c - 1) * patch + 1, patch)
        cell:copy_(cell:float() * 0.35)
      end
    end
  end
end

-- Outlines the region crop c shares with global crop g: the extent of the
-- overlap grid in crop c's frame ([-1, 1] crop coordinates).
local function overlap_outline(c, g)
  local grid = sere.augment_overlap_grids(maps[c], maps[g], 6)[1]
  if grid:min():item() < -1.5 then return end -- no overlap
  local size = crops[c]:shape()[1]
  local xs, ys = grid:select(3, 1), grid:select(3, 2)
  local function px(v) return math.floor((v + 1) / 2 * size + 0.5) end
  local inset = g == 1 and 0 or 2 -- so that coinciding outlines both show
  outline(crops[c], px(xs:min():item()) + inset, px(ys:min():item()) + inset, px(xs:max():item()) - inset,
          px(ys:max():item()) - inset, g == 1 and RED or BLUE, 2)
end
for c = 1, G + L do
  for g = 1, G do
    if g ~= c then overlap_outline(c, g) end
  end
end

-- The image scaled to a long side of 448, with every box.
local s = 448 / math.max(W, H)
local sw, sh = math.max(1, math.floor(W * s + 0.5)), math.max(1, math.floor(H * s + 0.5))
local small = sere.augment_resize(img, nil, sw, sh)
for c = G + L, 1, -1 do -- globals drawn last, on top
  local b = maps[c][1]:totable()
  local inset = c == 2 and 2 or 0
  local x0, y0 = math.floor(b[1] * s) + inset, math.floor(b[2] * s) + inset
  outline(small, x0, y0, math.max(x0 + 2, math.floor((b[1] + b[3]) * s + 0.5) - inset),
          math.max(y0 + 2, math.floor((b[2] + b[4]) * s + 0.5) - inset), colours[c], c <= G and 2 or 1)
end

-- Layout: [image | global 1 | global 2] over a row of the locals.
local gsize, lsize = recipe.global[1].size, recipe["local"][1].size
local top_h = math.max(sh, gsize)
local top_w = sw + G * (gsize + PAD) + PAD
local row_w = L * (lsize + PAD) + PAD
local canvas = sere.zeros({top_h + lsize + 3 * PAD, math.max(top_w, row_w) + PAD, 3}, {dtype = "u8"})
canvas:copy_(sere.tensor(GREY))
local function place(tile, x, y, colour)
  local n = tile:shape()[1]
  outline(canvas, x - 3, y - 3, x + tile:shape()[2] + 3, y + n + 3, colour, 3)
  paste(canvas, tile, x, y)
end
paste(canvas, small, PAD, PAD)
for g = 1, G do place(crops[g], PAD + sw + PAD + (g - 1) * (gsize + PAD), PAD, colours[g]) end
for l = 1, L do place(crops[G + l], PAD + (l - 1) * (lsize + PAD), top_h + 2 * PAD, GREEN) end

sere.image_save_png(out, canvas)
print(string.format("%s: %dx%d, seed %d -> %s", path, W, H, seed, out))
