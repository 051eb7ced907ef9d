-- sere.nn_vit — the Vision Transformer backbone of method.md section 2,
-- with masked-image-modelling token replacement, positional-embedding
-- interpolation for other crop sizes, stochastic depth, and the four SERE
-- relation heads that read the last block's patch tokens (section 4).
-- Returned through sere.nn (nn.VisionTransformer, nn.vit_small, ...).
return function(nn)
  local sere = require "sere"
  local init = nn.init
  local M = {}

  M.VARIANTS = {
    vit_tiny = {embed_dim = 192, depth = 12, heads = 3},
    vit_small = {embed_dim = 384, depth = 12, heads = 6},
    vit_base = {embed_dim = 768, depth = 12, heads = 12},
    vit_large = {embed_dim = 1024, depth = 24, heads = 16},
  }

  --- VisionTransformer(opts). opts: embed_dim, depth, heads (or a variant
  --- name in opts.arch), patch_size (16), img_size (224: the positional
  --- table's grid is img_size / patch_size), in_chans (3), mlp_ratio (4),
  --- qkv_bias (true), drop_path_rate (0), eps (1e-6), masked_im_modeling
  --- (false: no mask embedding; the student sets it), sere_heads (true).
  local ViT = nn.class("VisionTransformer")
  function ViT:__init(opts)
    opts = opts or {}
    local variant = opts.arch and M.VARIANTS[opts.arch]
    if opts.arch and not variant then error("VisionTransformer: unknown arch '" .. tostring(opts.arch) .. "'", 3) end
    variant = variant or {}
    local d = opts.embed_dim or variant.embed_dim or 384
    local depth = opts.depth or variant.depth or 12
    local heads = opts.heads or variant.heads or 6
    local p = opts.patch_size or 16
    local grid = (opts.img_size or 224) // p
    self.embed_dim, self.depth, self.heads, self.patch_size, self.grid = d, depth, heads, p, grid

    self:register_parameter("cls_token", init.trunc_normal_(sere.empty(1, 1, d), 0.02))
    self:register_parameter("pos_embed", init.trunc_normal_(sere.empty(1, 1 + grid * grid, d), 0.02))
    self:add_module("patch_embed", nn.PatchEmbed(p, opts.in_chans or 3, d))
    local blocks = nn.ModuleList()
    local dpr = opts.drop_path_rate or 0
    for i = 0, depth - 1 do
      local rate = depth > 1 and dpr * i / (depth - 1) or 0
      blocks:append(nn.Block(d, heads, {mlp_ratio = opts.mlp_ratio, qkv_bias = opts.qkv_bias,
        drop_path = rate, eps = opts.eps or 1e-6}))
    end
    self:add_module("blocks", blocks)
    self:add_module("norm", nn.LayerNorm(d, opts.eps or 1e-6))
    if opts.masked_im_modeling then self:register_parameter("masked_embed", init.zeros_(sere.empty(1, d))) end
    if opts.sere_heads ~= false then
      self:add_module("channel_sere", nn.SereHead(d))
      self:add_module("pixel_sere", nn.SereHead(d))
      self:add_module("channel_sere_local", nn.SereHead(d))
      self:add_module("pixel_sere_local", nn.SereHead(d))
    end
    -- every backbone Linear: truncated normal std 0.02, zero bias (2.8)
    for _, e in ipairs(blocks:named_modules()) do
      local m = e[2]
      if getmetatable(m) == nn.Linear then
        init.trunc_normal_(m.weight, 0.02)
        if m.bias then init.zeros_(m.bias) end
      end
    end
  end

  --- Positional embeddings for an hp x wp patch grid: the table itself for
  --- the native square grid, else the patch part resampled bicubically with
  --- the (n + 0.1) / grid scale factors of the reference (method 2.4).
  function ViT:pos_encoding(hp, wp)
    if hp == self.grid and wp == self.grid then return self.pos_embed end
    local d, g = self.embed_dim, self.grid
    local cls_pos = self.pos_embed:narrow(2, 1, 1)
    local patch_pos = self.pos_embed:narrow(2, 2, g * g):reshape(1, g, g, d):permute(1, 4, 2, 3)
    local resized = sere.interpolate_bicubic(patch_pos, (hp + 0.1) / g, (wp + 0.1) / g)
    local rs = resized:shape()
    assert(rs[3] == hp and rs[4] == wp, "pos_encoding: interpolation produced the wrong grid")
    return sere.cat({cls_pos, resized:permute(1, 3, 4, 2):reshape(1, hp * wp, d)}, 2)
  end

  --- Tokens [B, 1 + N, D] entering the first block. mask: bool [B, hp, wp]
  --- (or [B, N]); masked positions take the mask embedding instead of the
  --- patch embedding, before the positional embedding is added (2.3).
  function ViT:prepare_tokens(x, mask)
    local b = x:shape()[1]
    local pe = self.patch_embed(x) -- [B, D, hp, wp]
    local _, d, hp, wp = table.unpack(pe:shape())
    if mask then
      if not self.masked_embed then error("VisionTransformer: a mask was given but masked_im_modeling is off", 3) end
      local m = mask:reshape(b, 1, hp, wp)
      pe = sere.where(m, self.masked_embed:view(1, d, 1, 1), pe)
    end
    local tokens = pe:flatten(3):transpose(2, 3) -- [B, N, D]
    tokens = sere.cat({self.cls_token:expand(b, 1, d), tokens}, 2)
    return tokens + self:pos_encoding(hp, wp), hp, wp
  end

  --- forward(x[, opts]) with x [B, 3, H, W]. opts: mask (bool [B, hp, wp]),
  --- is_local (use the local SERE heads), sere (false skips the SERE heads).
  --- Returns a table: tokens [B, 1+N, D] after the final LayerNorm;
  --- patch_tokens [B, N, D] before it (last block); grid {hp, wp}; and,
  --- unless opts.sere == false, channel = {z = Z, p = P} and pixel =
  --- {z = Z, p = P} from the SERE heads, each [B, D, N] (projection and
  --- predictor outputs; relations are formed by sere.loss).
  function ViT:forward(x, opts)
    opts = opts or {}
    local h, hp, wp = self:prepare_tokens(x, opts.mask)
    for i = 1, self.blocks:len() do h = self.blocks:get(i)(h) end
    local n = hp * wp
    local out = {patch_tokens = h:narrow(2, 2, n), grid = {hp, wp}}
    out.tokens = self.norm(h)
    if opts.sere ~= false and self.channel_sere then
      local ch = opts.is_local and self.channel_sere_local or self.channel_sere
      local px = opts.is_local and self.pixel_sere_local or self.pixel_sere
      local cz, cp = ch(out.patch_tokens)
      local pz, pp = px(out.patch_tokens)
      out.channel, out.pixel = {z = cz, p = cp}, {z = pz, p = pp}
    end
    return out
  end

  --- Outputs of the last n blocks, each through the final LayerNorm
  --- (evaluation entry point; no masking, no SERE heads).
  function ViT:get_intermediate_layers(x, n)
    local h = self:prepare_tokens(x)
    local outs = {}
    local depth = self.blocks:len()
    for i = 1, depth do
      h = self.blocks:get(i)(h)
      if i > depth - (n or 1) then outs[#outs + 1] = self.norm(h) end
    end
    return outs
  end

  --- Attention probabilities of the last block, [B, heads, 1+N, 1+N]:
  --- softmax(Q_j K_j^T d^-1/2) of every head j over the keys (class token
  --- first; row 1 is the class token's attention to every token), from the
  --- last block's norm1 and qkv applied to its input. The blocks before it
  --- run as in forward (no mask); differentiable (wrap it in sere.no_grad
  --- to visualise).
  function ViT:get_last_selfattention(x)
    local h = self:prepare_tokens(x)
    local depth = self.blocks:len()
    for i = 1, depth - 1 do h = self.blocks:get(i)(h) end
    local last = self.blocks:get(depth)
    local attn = last.attn
    local b, t = h:shape()[1], h:shape()[2]
    local qkv = attn.qkv(last.norm1(h)):reshape(b, t, 3, attn.heads, attn.head_dim):permute(3, 1, 4, 2, 5)
    local q, k = qkv:select(1, 1), qkv:select(1, 2) -- [B, heads, T, head_dim]
    return q:matmul(k:transpose(3, 4)):mul(attn.scale):softmax(-1)
  end

  M.VisionTransformer = ViT

  --- nn.vit_tiny/vit_small/vit_base/vit_large(opts): the variants of method 2.1.
  for name, v in pairs(M.VARIANTS) do
    M[name] = function(opts)
      local o = {}
      for k, val in pairs(opts or {}) do o[k] = val end
      o.embed_dim, o.depth, o.heads = v.embed_dim, v.depth, v.heads
      return ViT(o)
    end
  end

  return M
end
