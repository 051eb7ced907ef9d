-- no_channel.lua — ablation: iBOT + SERE without the channel relation.
-- recipes/vit_small.lua with beta = 0: the objective then skips the
-- channel term (its heads get no gradient and cost nothing), and the iBOT
-- loss weighs (4 - alpha) / 2.
--
--   sere recipes/ablations/no_channel.lua --data_path ... --output_dir ...   (every vit_small.lua flag)
local recipe = require "sere.recipe"

local R = recipe.load("../vit_small.lua")
R.program = "recipes/ablations/no_channel.lua"
R.description = "ablation: iBOT + SERE without the channel relation loss (beta = 0)."
R.defaults.beta = 0.0

return R:main(...)
