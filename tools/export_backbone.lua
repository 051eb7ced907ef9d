-- export_backbone.lua — writes the backbone of a training checkpoint as a
-- file of its own, for downstream use (method.md 10.3):
--
--   sere tools/export_backbone.lua CHECKPOINT OUT.safetensors [--which teacher|student]
--
-- OUT holds the chosen network's backbone (default: the teacher) under the
-- reference implementation's parameter names (10.4) without the `module.`
-- and `backbone.` prefixes: cls_token, pos_embed, patch_embed.proj.*,
-- blocks.{i}.*, norm.*. The iBOT head, the four SERE heads and the mask
-- embedding are left out. Metadata: arch (when the configuration names
-- one), embed_dim, depth, heads, patch_size, img_size, which, source (the
-- checkpoint's path). Written atomically (sere.io.save). PyTorch loads it
-- into a ViT of that shape with load_state_dict(strict=True); sere's
-- tools/knn.lua and tools/attention.lua take it as --checkpoint.
-- Errors (a missing or unreadable file, a file that is not a checkpoint, a
-- bad flag) print one line and exit with status 1.
local sere = require "sere"
local args = require "sere.args"
local eval = require "sere.eval"

local SPEC = {
  {"which", "teacher", "the network to export", choices = {"teacher", "student"}},
}
local OPTS = {program = "tools/export_backbone.lua", positional = "CHECKPOINT OUT.safetensors",
  description = "Writes the backbone of a sere training checkpoint under the reference names (method.md 10.4)."}

local function fail(msg) args.fail(OPTS, msg) end

local cfg, positional = args.parse(arg, SPEC, OPTS)
if #positional ~= 2 then
  fail(string.format("want CHECKPOINT and OUT.safetensors, got %d argument%s (usage: sere %s %s "
    .. "[--which teacher|student])", #positional, #positional == 1 and "" or "s", OPTS.program, OPTS.positional))
end
local checkpoint, out = positional[1], positional[2]

local ok, err = pcall(function()
  local _, info, tensors = eval.load_backbone(checkpoint, cfg.which) -- strict: names and shapes checked
  if info.kind ~= "checkpoint" then error(checkpoint .. " is already an exported backbone", 0) end
  sere.io.save(out, tensors, eval.backbone_metadata(info))
  local count, params = 0, 0
  for _, t in pairs(tensors) do count, params = count + 1, params + t:numel() end
  print(string.format("export_backbone: %s: the %s backbone (%s embed_dim %d, depth %d, heads %d, patch %d, "
    .. "img_size %d), %d tensors, %d parameters", out, info.which, info.arch and (info.arch .. ",") or "ViT",
    info.embed_dim, info.depth, info.heads, info.patch_size, info.img_size, count, params))
end)
if not ok then fail(err) end
