-- pixel_on_backbone.lua — ablation: the pixel (spatial) relation computed
-- on the backbone's last-block patch tokens directly, without the SERE
-- projection/predictor heads (teacher and student both use the raw
-- tokens). recipes/vit_small.lua with one piece replaced: after the
-- networks are built, their pixel relation heads (global and local) are
-- swapped for a module that passes the tokens through. The channel
-- relation keeps its heads.
--
--   sere recipes/ablations/pixel_on_backbone.lua --data_path ... --output_dir ...   (every vit_small.lua flag)
local nn = require "sere.nn"
local recipe = require "sere.recipe"

local R = recipe.load("../vit_small.lua")
R.program = "recipes/ablations/pixel_on_backbone.lua"
R.description = "ablation: pixel relation on the backbone tokens, without the SERE projection heads."

-- In place of a SereHead: the tokens [B, N, D] as a feature map [B, D, N],
-- for both Z (teacher side) and P (student side).
local RawTokens = nn.class("RawTokens")
function RawTokens:forward(tokens)
  local x = tokens:transpose(2, 3)
  return x, x
end

local build = R.networks
function R.networks(a)
  local student, teacher = build(a)
  for _, net in ipairs({student, teacher}) do
    net.backbone:add_module("pixel_sere", RawTokens())
    net.backbone:add_module("pixel_sere_local", RawTokens())
  end
  return student, teacher
end

return R:main(...)
