-- make_shapes.lua — writes the procedural shapes-and-textures dataset of
-- sere.synthetic (the quick-start recipe's data) as an ImageFolder pair:
--
--   sere tools/make_shapes.lua OUT_DIR [--train_per_class 40] [--val_per_class 10] [--size 40] [--seed 0]
--
-- OUT_DIR/train/<class>/NNNN.png and OUT_DIR/val/<class>/NNNN.png, 10
-- classes; the same flags give the same files. An OUT_DIR that already
-- holds a complete dataset (OUT_DIR/COMPLETE) is left as it is.
local args = require "sere.args"
local synthetic = require "sere.synthetic"

local SPEC = {
  {"train_per_class", 40, "training images per class"},
  {"val_per_class", 10, "validation images per class"},
  {"size", 40, "image side in pixels"},
  {"seed", 0, "random seed"},
}
local OPTS = {program = "tools/make_shapes.lua", positional = "OUT_DIR",
  description = "Draws a 10-class ImageFolder of shapes and textures (sere.synthetic)."}
local a, positional = args.parse(arg, SPEC, OPTS)
if #positional ~= 1 then args.fail(OPTS, "give one output directory (--help for usage)") end
local root = positional[1]
local wrote = synthetic.make(root, {train_per_class = a.train_per_class, val_per_class = a.val_per_class,
  size = a.size, seed = a.seed})
print(string.format("%s %s: %d classes, %d train and %d val images per class", wrote and "wrote" or "kept", root,
  #synthetic.CLASSES, a.train_per_class, a.val_per_class))
