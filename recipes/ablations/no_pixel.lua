-- no_pixel.lua — ablation: iBOT + SERE without the pixel (spatial)
-- relation. recipes/vit_small.lua with alpha = 0: the objective then skips
-- the pixel term (no overlap-grid sampling at all), and the iBOT loss
-- weighs (4 - beta) / 2.
--
--   sere recipes/ablations/no_pixel.lua --data_path ... --output_dir ...   (every vit_small.lua flag)
local recipe = require "sere.recipe"

local R = recipe.load("../vit_small.lua")
R.program = "recipes/ablations/no_pixel.lua"
R.description = "ablation: iBOT + SERE without the pixel relation loss (alpha = 0)."
R.defaults.alpha = 0.0

return R:main(...)
