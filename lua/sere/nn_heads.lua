-- sere.nn_heads — the heads of method.md sections 3 and 4 and the
-- student/teacher multi-crop wrapper:
--   SereHead           projection BN+ReLU, predictor 1x1 conv + BN + ReLU
--   WeightNormLinear   W_k = g_k v_k / ||v_k|| (the iBOT prototype layer)
--   IbotHead           3-layer MLP, L2 normalisation, prototype layer
--   MultiCrop          backbone + head over groups of equal-size crops
-- Returned through sere.nn.
return function(nn)
  local sere = require "sere"
  local init = nn.init
  local M = {}

  --- SereHead(D): reads last-block patch tokens [B, N, D] as a feature map
  --- [B, D, N] and returns Z = ReLU(BN(X)) and P = ReLU(BN(Conv1x1(Z)))
  --- (no conv bias; default initialisations, method 4.1 and 4.6).
  local SereHead = nn.class("SereHead")
  function SereHead:__init(d)
    self:add_module("projection", nn.Sequential(nn.BatchNorm(d), nn.ReLU()))
    self:add_module("predictor", nn.Sequential(nn.Conv2d(d, d, 1, false), nn.BatchNorm(d), nn.ReLU()))
  end
  function SereHead:forward(tokens)
    local z = self.projection(tokens:transpose(2, 3))
    return z, self.predictor(z)
  end
  M.SereHead = SereHead

  --- WeightNormLinear(in, out[, frozen_g]): no bias; weight_v default
  --- uniform, weight_g ones [out, 1]; g gets no gradient when frozen_g
  --- (norm_last_layer).
  local WeightNormLinear = nn.class("WeightNormLinear")
  function WeightNormLinear:__init(fan_in, fan_out, frozen_g)
    self:register_parameter("weight_g", sere.ones({fan_out, 1}, {requires_grad = not frozen_g}))
    self:register_parameter("weight_v", init.default_uniform(sere.empty(fan_out, fan_in), fan_in))
  end
  --- The effective weight g * v / ||v|| (row-wise).
  function WeightNormLinear:weight()
    return self.weight_v * (self.weight_g / self.weight_v:norm(2, 2, true))
  end
  function WeightNormLinear:forward(x) return x:matmul(self:weight():t()) end
  M.WeightNormLinear = WeightNormLinear

  --- IbotHead(in_dim, out_dim[, opts]): opts hidden_dim (2048),
  --- bottleneck_dim (256), norm_last_layer (true), shared_head (true: the
  --- patch tokens use the same prototype layer, registered a second time
  --- as last_layer2 like the reference), patch_out_dim (out_dim).
  local IbotHead = nn.class("IbotHead")
  function IbotHead:__init(in_dim, out_dim, opts)
    opts = opts or {}
    local hidden, bottleneck = opts.hidden_dim or 2048, opts.bottleneck_dim or 256
    local mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
      nn.Linear(hidden, bottleneck))
    for _, e in ipairs(mlp:named_modules()) do
      if getmetatable(e[2]) == nn.Linear then
        init.trunc_normal_(e[2].weight, 0.02)
        init.zeros_(e[2].bias)
      end
    end
    self:add_module("mlp", mlp)
    local frozen = opts.norm_last_layer ~= false
    self:add_module("last_layer", WeightNormLinear(bottleneck, out_dim, frozen))
    if opts.shared_head ~= false then
      self:add_module("last_layer2", self.last_layer)
    else
      self:add_module("last_layer2", WeightNormLinear(bottleneck, opts.patch_out_dim or out_dim, frozen))
    end
  end

  --- The L2-normalised bottleneck features of every token: [..., bottleneck].
  function IbotHead:features(x)
    return sere.normalize(self.mlp(x), -1, 1e-12)
  end

  --- forward(x): x [B, 1+N, D] -> class logits [B, K], patch logits
  --- [B, N, K]; x [B, D] -> [B, K].
  function IbotHead:forward(x)
    local f = self:features(x)
    if x:dim() == 2 then return self.last_layer(f) end
    local n = f:shape()[2] - 1
    return self.last_layer(f:select(2, 1)), self.last_layer2(f:narrow(2, 2, n))
  end
  M.IbotHead = IbotHead

  --- MultiCrop(backbone, head): runs the backbone once per group of
  --- consecutive crops of equal resolution (concatenated along the batch)
  --- and the head's feature MLP on its tokens. forward(crops, opts):
  --- crops is an array of [B, 3, H, W] tensors; opts.masks an array of
  --- masks for the first crops (or nil); opts.n_global the number of
  --- global crops (crops after them use the local SERE heads — passed
  --- explicitly, unlike the reference's crop-count rule, method 4.4).
  --- Returns an array of groups {first = i, count = n, out = backbone
  --- outputs, features = normalised head features [n*B, 1+N, bottleneck]}.
  local MultiCrop = nn.class("MultiCrop")
  function MultiCrop:__init(backbone, head)
    self:add_module("backbone", backbone)
    self:add_module("head", head)
  end
  function MultiCrop:forward(crops, opts)
    opts = opts or {}
    local n_global = opts.n_global or 2
    local groups, i = {}, 1
    while i <= #crops do
      local size = crops[i]:shape()[3]
      local j = i
      while j + 1 <= #crops and crops[j + 1]:shape()[3] == size and (j + 1 <= n_global) == (i <= n_global) do
        j = j + 1
      end
      local batch = {}
      for k = i, j do batch[#batch + 1] = crops[k] end
      local mask
      if opts.masks and opts.masks[i] then
        local ms = {}
        for k = i, j do ms[#ms + 1] = opts.masks[k] end
        mask = sere.cat(ms, 1)
      end
      local out = self.backbone(sere.cat(batch, 1), {mask = mask, is_local = i > n_global})
      groups[#groups + 1] = {first = i, count = j - i + 1, out = out, features = self.head:features(out.tokens)}
      i = j + 1
    end
    return groups
  end
  M.MultiCrop = MultiCrop

  return M
end
