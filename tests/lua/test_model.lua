-- test_model.lua — every sere.nn module against the PyTorch reference
-- (tests/reference/sere_ref.py, data in tests/data/model/): outputs, the
-- gradients of inputs and of every parameter, BatchNorm buffers after the
-- forward, and state_dict names identical to the reference's.
-- Tolerances: the reference is float64 rounded to f32; sere computes in
-- f32, so small modules match to ~1e-5 relative; the ViT and heads (deeper
-- chains, softmax, normalisation) to TOL_DEEP.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local nn = require "sere.nn"
local loss = require "sere.loss"
local R = dofile("tests/lua/refdata.lua")

local ATOL, RTOL = 1e-5, 1e-4
local TOL_DEEP = 2e-4

-- Builds `module`, loads param.* into it (strict: the names must be the
-- reference's), runs fwd(t) -> table of outputs, compares them and their
-- gradients.
local function check_module(file, module, fwd, opts)
  opts = opts or {}
  local prefix = opts.prefix or ""
  local t = R.load(file)
  module:load_state_dict(R.strip(t, opts.param_prefix or (prefix .. "param.")))
  local outputs, inputs = fwd(t, prefix)
  local atol, rtol = opts.atol or ATOL, opts.rtol or RTOL
  for name, y in pairs(outputs) do
    sere.testing.assert_close(y, t[prefix .. "output." .. name], atol, rtol, file .. " output " .. name)
  end
  R.backward(outputs, t, prefix)
  for name, x in pairs(inputs or {}) do
    sere.testing.assert_close(x.grad, t[prefix .. "grad.input." .. name], atol, rtol, file .. " grad of input " .. name)
  end
  local n = R.check_param_grads(module, t, prefix .. "grad.param.", atol, rtol)
  assert(n > 0 or opts.no_param_grads, file .. ": no parameter gradient compared")
  for name, want in pairs(R.strip(t, prefix .. "after.")) do
    sere.testing.assert_close(module:state_dict()[name], want, atol, rtol, file .. " buffer " .. name)
  end
  return t
end

local function simple(file, module, input_name)
  return check_module(file, module, function(t, p)
    local x = R.input(t, p .. "input." .. (input_name or "x"), true)
    return {y = module(x)}, {[input_name or "x"] = x}
  end)
end

T.test("Linear", function() simple("linear", nn.Linear(5, 4)) end)
T.test("LayerNorm", function() simple("layernorm", nn.LayerNorm(8, 1e-6)) end)
T.test("Mlp", function() simple("mlp", nn.Mlp(8, 32)) end)
T.test("Attention", function() simple("attention", nn.Attention(8, 2)) end)
T.test("Block", function() simple("block", nn.Block(8, 2)) end)
T.test("PatchEmbed", function() simple("patch_embed", nn.PatchEmbed(4, 3, 6)) end)

T.test("positional-embedding interpolation", function()
  local t, meta = R.load("pos_interp")
  local cases = {m14_to_6x6 = {14, 6, 6}, m4_to_2x2 = {4, 2, 2}, m4_to_3x5 = {4, 3, 5}, m14_to_7x9 = {14, 7, 9}}
  for case, c in pairs(cases) do
    local vit = nn.VisionTransformer({embed_dim = 4, depth = 1, heads = 1, patch_size = 1, img_size = c[1],
      sere_heads = false})
    sere.no_grad(function() vit.pos_embed:copy_(t[case .. ".input.pos_embed"]) end)
    vit.pos_embed.grad = nil
    local out = vit:pos_encoding(c[2], c[3])
    sere.testing.assert_close(out, t[case .. ".output.pos_embed"], ATOL, RTOL, case)
    out:backward(t[case .. ".upstream.pos_embed"])
    sere.testing.assert_close(vit.pos_embed.grad, t[case .. ".grad.input.pos_embed"], ATOL, RTOL, case .. " grad")
  end
  assert(meta.config:find("0.75"), "metadata lost")
end)

-- The tiny ViT (D 32, depth 2, 2 heads, p 16, img 64), three cases.
local function vit_case(case, is_local, mask, keep)
  local vit = nn.VisionTransformer({embed_dim = 32, depth = 2, heads = 2, patch_size = 16, img_size = 64,
    masked_im_modeling = true, drop_path_rate = keep and 0.3 or 0})
  check_module("vit", vit, function(t, p)
    local x = R.input(t, p .. "input.x", true)
    if keep then
      -- keep flags [depth, 2 (attention, MLP), B] from the reference
      local k = t[p .. "input.keep"]
      for i = 1, 2 do
        local calls = 0
        vit.blocks:get(i).drop_path.keep_fn = function(shape)
          calls = calls + 1
          return k[i][calls]:reshape(shape)
        end
      end
    end
    local out = vit(x, {mask = mask and t[p .. "input.mask"], is_local = is_local})
    local sigma = is_local and 6 or 14
    return {
      tokens = out.tokens, patch_pre = out.patch_tokens,
      channel_z = loss.channel_relation(out.channel.z, sigma), channel_p = loss.channel_relation(out.channel.p, sigma),
      pixel_z = loss.pixel_relation(out.pixel.z, 2), pixel_p = loss.pixel_relation(out.pixel.p, 2),
    }, {x = x}
  end, {prefix = case .. ".", param_prefix = "param.", atol = TOL_DEEP, rtol = TOL_DEEP})
end

T.test("ViT masked global crops (global SERE heads)", function() vit_case("masked", false, true) end)
T.test("ViT local crops (interpolated positions, local heads)", function() vit_case("local", true, false) end)
T.test("ViT with drop path (reference keep flags)", function() vit_case("droppath", true, false, true) end)

local function head_case(file, norm_last_layer)
  local head = nn.IbotHead(8, 12, {hidden_dim = 16, bottleneck_dim = 8, norm_last_layer = norm_last_layer})
  local t = check_module(file, head, function(t)
    local x = R.input(t, "input.x", true)
    local cls, patch = head(x)
    return {cls = cls, patch = patch}, {x = x}
  end)
  sere.testing.assert_close(head(t["input.x2d"]), t["output.logits2d"], ATOL, RTOL, "2-D call")
  assert(head.last_layer2 == head.last_layer, "shared head must be one module")
  assert(head.last_layer.weight_g.requires_grad == not norm_last_layer)
end

T.test("iBOT head, norm_last_layer (g frozen)", function() head_case("ibot_head_norm", true) end)
T.test("iBOT head, trainable g", function() head_case("ibot_head_nonorm", false) end)

local function sere_head_case(file, relation)
  local head = nn.SereHead(8)
  check_module(file, head, function(t)
    local x = R.input(t, "input.x", true)
    local z, p = head(x)
    return {z = relation(z), p = relation(p)}, {x = x}
  end)
end

T.test("ChannelSERE (sigma 14)", function()
  sere_head_case("channel_sere", function(z) return loss.channel_relation(z, 14) end)
end)
T.test("ChannelSERE local (sigma 6)", function()
  sere_head_case("channel_sere_local", function(z) return loss.channel_relation(z, 6) end)
end)
T.test("PixelSERE", function() sere_head_case("pixel_sere", function(z) return loss.pixel_relation(z, 2) end) end)
T.test("PixelSERE local", function()
  sere_head_case("pixel_sere_local", function(z) return loss.pixel_relation(z, 2) end)
end)

T.test("state_dict names equal the reference's, and strict loading reports problems", function()
  local t = R.load("model_tiny")
  local want = R.strip(t, "student.backbone.")
  local vit = nn.VisionTransformer({embed_dim = 32, depth = 2, heads = 2, patch_size = 16, img_size = 64,
    masked_im_modeling = true})
  local own = vit:state_dict()
  for k in pairs(want) do assert(own[k], "sere lacks " .. k) end
  for k in pairs(own) do assert(want[k], "sere has extra " .. k) end
  local sd = {}
  for k, v in pairs(want) do sd[k] = v end
  sd["blocks.0.attn.qkv.weight"] = sere.zeros(3, 3)
  sd["extra.thing"] = sere.zeros(1)
  sd["norm.bias"] = nil
  local err = T.raises(function() vit:load_state_dict(sd) end, "shape mismatch for blocks%.0%.attn%.qkv%.weight")
  assert(err:find("missing keys: norm.bias") and err:find("unexpected keys: extra.thing"), err)
  local missing, unexpected = vit:load_state_dict({["norm.bias"] = sere.ones(32)}, {strict = false})
  assert(#missing > 0 and #unexpected == 0)
  T.eq(vit.norm.bias[1], 1.0)
end)

T.test("a ViT-B in three lines, loading reference-named weights", function()
  local vit = nn.vit_base({patch_size = 16, sere_heads = false})
  T.eq(vit.embed_dim, 768); T.eq(vit.blocks:len(), 12)
  -- method 2.1: ViT-B backbone 85.80 M parameters (without SERE heads and mask token)
  T.close(vit:num_parameters() / 1e6, 85.80, 0.01, 0)
end)

T.finish()
