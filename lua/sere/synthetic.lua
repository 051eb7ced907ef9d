-- sere.synthetic — a labelled image dataset drawn procedurally, so the
-- quick-start recipe (recipes/tiny.lua) and the tests have data without a
-- download: 10 classes of shapes and textures (disc, square, triangle,
-- ring, horizontal / vertical / diagonal stripes, checker, cross, dots),
-- written as PNG files in an ImageFolder tree (root/train/<class>/NNNN.png,
-- root/val/<class>/NNNN.png). tools/make_shapes.lua is the command line.
--
-- Each image has a random dark background and a bright foreground of a
-- random tint, so the class is in the geometry, not the colour (had the
-- colours been class-specific, matching them between two views would be
-- the easy way to solve the pretext task); positions, sizes, periods and
-- phases vary, and every pixel gets Gaussian noise (sigma 8).
local sere = require "sere"

local synthetic = {}

synthetic.CLASSES = {"checker", "cross", "diagonal", "disc", "dots", "hstripes", "ring", "square", "triangle",
                     "vstripes"}

--- draw(class, size, gen) -> u8 [size, size, 3]: one image of `class`,
--- its randomness from the sere.Generator `gen`.
function synthetic.draw(class, size, gen)
  local u = sere.rand({8}, {generator = gen}):totable()
  local x = sere.arange(0, size):float():view(1, size):expand(size, size)
  local y = sere.arange(0, size):float():view(size, 1):expand(size, size)
  local cx, cy = size * (0.35 + 0.3 * u[1]), size * (0.35 + 0.3 * u[2])
  local r = size * (0.2 + 0.12 * u[3])
  local period = size / 10 + math.floor(size / 10 * u[4])
  local function stripes(t) return (t / period):floor():div(2):sub((t / period):floor():div(2):floor()):gt(0.25) end
  local dx, dy = (x - cx):abs(), (y - cy):abs()
  local mask
  if class == "disc" then mask = (dx:square() + dy:square()):lt(r * r)
  elseif class == "square" then mask = dx:maximum(dy):lt(r)
  elseif class == "triangle" then mask = (y - cy):lt(r):logical_and((dx * 2 + (cy - y)):lt(r))
  elseif class == "ring" then
    local d2 = dx:square() + dy:square()
    mask = d2:lt(r * r):logical_and(d2:gt((r * 0.6) ^ 2))
  elseif class == "hstripes" then mask = stripes(y + u[5] * period)
  elseif class == "vstripes" then mask = stripes(x + u[5] * period)
  elseif class == "checker" then mask = stripes(x + u[5] * period):logical_xor(stripes(y + u[6] * period))
  elseif class == "cross" then mask = dx:minimum(dy):lt(r * 0.3):logical_and(dx:maximum(dy):lt(r * 1.3))
  elseif class == "diagonal" then mask = stripes((x + y) * 0.7 + u[5] * period)
  elseif class == "dots" then mask = stripes(x + u[5] * period):logical_and(stripes(y + u[6] * period))
  else error("synthetic.draw: unknown class '" .. tostring(class) .. "'", 2) end
  local fg = sere.rand({3}, {generator = gen}):mul(80):add(160)
  local bg = sere.rand({3}, {generator = gen}):mul(80)
  local img = sere.where(mask:view(size, size, 1), fg:view(1, 1, 3), bg:view(1, 1, 3))
  local noise = sere.randn({size, size, 3}, {generator = gen}):mul(8)
  return (img + noise):clamp(0, 255):byte()
end

--- make(root, opts) -> true if it wrote the dataset, false if root already
--- held a complete one (marked by root/COMPLETE). opts: train_per_class
--- (100), val_per_class (30), size (40 pixels), seed (0). The same options
--- give the same files.
function synthetic.make(root, opts)
  opts = opts or {}
  local done = root .. "/COMPLETE"
  local f = io.open(done)
  if f then f:close() return false end
  local size = opts.size or 40
  local gen = sere.Generator((opts.seed or 0) + 1000)
  for _, split in ipairs({{"train", opts.train_per_class or 100}, {"val", opts.val_per_class or 30}}) do
    for _, class in ipairs(synthetic.CLASSES) do
      local dir = string.format("%s/%s/%s", root, split[1], class)
      if not os.execute("mkdir -p '" .. dir .. "'") then error("synthetic.make: cannot create " .. dir, 2) end
      for n = 1, split[2] do
        sere.image.save_png(string.format("%s/%04d.png", dir, n), synthetic.draw(class, size, gen))
      end
    end
  end
  assert(io.open(done, "w")):close()
  return true
end

return synthetic
