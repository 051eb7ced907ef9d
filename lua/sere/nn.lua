-- sere.nn — modules: a Module base class (parameters, buffers, children,
-- train/eval, state_dict/load_state_dict with the reference implementation's
-- names) and the generic layers the ViT is built from. Model-specific
-- modules (ViT, iBOT head, SERE heads, multi-crop wrapper) are in
-- sere/nn_vit.lua and sere/nn_heads.lua and are re-exported here.
--
--   local nn = require "sere.nn"
--   local lin = nn.Linear(384, 1536)
--   local y = lin(x)                     -- modules are callable: lin:forward(x)
--   for name, p in lin:named_parameters() do ... end
local sere = require "sere"
local init = require "sere.nn_init"

local nn = {init = init}

-- ---- classes ---------------------------------------------------------------
local Module = {}
Module.__index = Module
Module.__name = "Module"

local function call_forward(self, ...) return self:forward(...) end

local function module_tostring(self)
  local lines = {self.__name .. "("}
  for _, name in ipairs(self._module_names) do
    local child = tostring(self._modules[name]):gsub("\n", "\n  ")
    lines[#lines + 1] = "  (" .. name .. "): " .. child
  end
  if #lines == 1 then return self.__name .. "(" .. (self:extra_repr() or "") .. ")" end
  lines[#lines + 1] = ")"
  return table.concat(lines, "\n")
end

--- nn.class(name[, parent]) makes a module class. Calling the class builds
--- an instance: fields are set up by Module, then cls.__init(self, ...) runs.
function nn.class(name, parent)
  parent = parent or Module
  local cls = {}
  cls.__index = cls
  cls.__name = name
  cls.__call = call_forward
  cls.__tostring = module_tostring
  return setmetatable(cls, {
    __index = parent,
    __call = function(c, ...)
      local self = setmetatable({}, c)
      Module._setup(self)
      c.__init(self, ...)
      return self
    end,
  })
end
nn.Module = Module

function Module._setup(self)
  rawset(self, "_parameters", {})
  rawset(self, "_param_names", {})
  rawset(self, "_buffers", {})
  rawset(self, "_buffer_names", {})
  rawset(self, "_modules", {})
  rawset(self, "_module_names", {})
  rawset(self, "training", true)
end

function Module.__init() end
function Module:extra_repr() return nil end
function Module:forward() error(self.__name .. ": forward is not implemented", 2) end

local function add_name(list, name)
  for _, n in ipairs(list) do if n == name then return end end
  list[#list + 1] = name
end

--- Registers tensor t (or nil) as parameter `name`; also sets self[name].
function Module:register_parameter(name, t)
  assert(t == nil or sere.is_tensor(t), "register_parameter: expected a tensor")
  add_name(self._param_names, name)
  self._parameters[name] = t
  rawset(self, name, t)
  return t
end

--- Registers a buffer (state that is saved but not optimised).
function Module:register_buffer(name, t)
  add_name(self._buffer_names, name)
  self._buffers[name] = t
  rawset(self, name, t)
  return t
end

--- Adds a child module under `name` (a number becomes its string, as in
--- nn.Sequential's "0", "1", ...); also sets self[name].
function Module:add_module(name, m)
  name = tostring(name)
  add_name(self._module_names, name)
  self._modules[name] = m
  rawset(self, name, m)
  return m
end

--- Iterates over (name, module) for this module and all descendants, in
--- registration order (the module itself first, with name prefix or "").
--- A module registered under two names is visited once (the first).
function Module:named_modules(prefix, seen, out)
  prefix, seen, out = prefix or "", seen or {}, out or {}
  if seen[self] then return out end
  seen[self] = true
  out[#out + 1] = {prefix, self}
  for _, name in ipairs(self._module_names) do
    local child = self._modules[name]
    if child then child:named_modules(prefix == "" and name or (prefix .. "." .. name), seen, out) end
  end
  return out
end

local function iterate(list)
  local i = 0
  return function()
    i = i + 1
    local e = list[i]
    if e then return e[1], e[2] end
  end
end

-- Collects (full name, tensor) of one kind ("_parameters" or "_buffers").
-- dedup: skip tensors already seen (shared modules), as parameters() does.
local function collect(self, field, names_field, dedup)
  local out, seen_tensor = {}, {}
  local function walk(m, prefix, seen_module)
    if dedup then
      if seen_module[m] then return end
      seen_module[m] = true
    end
    for _, name in ipairs(m[names_field]) do
      local t = m[field][name]
      if t ~= nil and not (dedup and seen_tensor[t]) then
        seen_tensor[t] = true
        out[#out + 1] = {prefix .. name, t}
      end
    end
    for _, cname in ipairs(m._module_names) do
      local child = m._modules[cname]
      if child then walk(child, prefix .. cname .. ".", seen_module) end
    end
  end
  walk(self, "", {})
  return out
end

--- Iterator over (name, parameter), each tensor once even when shared.
function Module:named_parameters() return iterate(collect(self, "_parameters", "_param_names", true)) end

--- Array of parameters (each once).
function Module:parameters()
  local out = {}
  for _, e in ipairs(collect(self, "_parameters", "_param_names", true)) do out[#out + 1] = e[2] end
  return out
end

function Module:named_buffers() return iterate(collect(self, "_buffers", "_buffer_names", true)) end

--- The module's state as an ordered array of {name, tensor} plus a map, with
--- the reference implementation's names; a module registered under two
--- names appears under both (as in PyTorch's state_dict).
function Module:state_dict_list()
  local out = collect(self, "_parameters", "_param_names", false)
  for _, e in ipairs(collect(self, "_buffers", "_buffer_names", false)) do out[#out + 1] = e end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end

--- name -> tensor map of parameters and buffers (the tensors themselves, not copies).
function Module:state_dict()
  local map = {}
  for _, e in ipairs(self:state_dict_list()) do map[e[1]] = e[2] end
  return map
end

local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

local function listing(names, limit)
  table.sort(names)
  local shown = {}
  for i = 1, math.min(#names, limit) do shown[i] = names[i] end
  local s = table.concat(shown, ", ")
  if #names > limit then s = s .. string.format(", ... (%d in all)", #names) end
  return s
end

--- Copies tensors from `sd` (name -> tensor, e.g. from sere.io.load) into
--- this module's parameters and buffers, converting dtypes. With strict
--- (default true) every key must match: missing, unexpected and mis-shaped
--- keys are reported together in one error. Shapes must always match.
--- Returns the lists of missing and unexpected keys (non-strict use).
function Module:load_state_dict(sd, opts)
  opts = opts or {}
  local strict = opts.strict ~= false
  local own = self:state_dict()
  local missing, unexpected, bad_shape = {}, {}, {}
  for name, t in pairs(own) do
    local src = sd[name]
    if src == nil then
      missing[#missing + 1] = name
    elseif not sere.is_tensor(src) then
      bad_shape[#bad_shape + 1] = string.format("%s (not a tensor: %s)", name, type(src))
    elseif shape_str(src) ~= shape_str(t) then
      bad_shape[#bad_shape + 1] = string.format("%s (checkpoint %s, model %s)", name, shape_str(src), shape_str(t))
    end
  end
  for name in pairs(sd) do
    if own[name] == nil then unexpected[#unexpected + 1] = name end
  end
  local problems = {}
  if #bad_shape > 0 then problems[#problems + 1] = "shape mismatch for " .. listing(bad_shape, 10) end
  if strict and #missing > 0 then problems[#problems + 1] = "missing keys: " .. listing(missing, 10) end
  if strict and #unexpected > 0 then problems[#problems + 1] = "unexpected keys: " .. listing(unexpected, 10) end
  if #problems > 0 then
    error(string.format("load_state_dict (%s): %s", self.__name, table.concat(problems, "; ")), 2)
  end
  sere.no_grad(function()
    for name, t in pairs(own) do
      if sd[name] ~= nil then t:copy_(sd[name]) end
    end
  end)
  return missing, unexpected
end

--- Sets training mode on this module and all descendants; returns self.
function Module:train(mode)
  if mode == nil then mode = true end
  for _, e in ipairs(self:named_modules()) do rawset(e[2], "training", mode) end
  return self
end

function Module:eval() return self:train(false) end

--- Moves every parameter, buffer and other tensor field of this module and
--- its descendants to `device` ("cpu" or "cuda"), in place, like PyTorch's
--- module.to(device): each tensor is replaced by its copy on the device
--- (parameters stay leaves with their requires_grad; a tensor shared by two
--- modules stays shared). Gradients are dropped. Returns self.
function Module:to(device)
  assert(device == "cpu" or device == "cuda", "Module:to: expected 'cpu' or 'cuda'")
  local moved = {}
  local function move(t)
    if moved[t] then return moved[t] end
    local m = t:detach():to(device)
    if m == t or m:shares_storage(t) then m = t else m.requires_grad = t.requires_grad end
    moved[t] = m
    return m
  end
  for _, e in ipairs(self:named_modules()) do
    local mod = e[2]
    for _, field in ipairs({"_parameters", "_buffers"}) do
      for name, t in pairs(mod[field]) do mod[field][name] = move(t) end
    end
    for k, v in pairs(mod) do
      if sere.is_tensor(v) then rawset(mod, k, move(v)) end
    end
    for _, t in pairs(mod._parameters) do t.grad = nil end
  end
  return self
end

function Module:cuda() return self:to("cuda") end
function Module:cpu() return self:to("cpu") end

--- Clears the gradients of all parameters.
function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

--- Total number of elements of the parameters (each shared tensor once).
function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

-- ---- generic layers ----------------------------------------------------------
local Identity = nn.class("Identity")
function Identity:forward(x) return x end
nn.Identity = Identity

--- Sequential(m1, m2, ...): children named "0", "1", ... as in PyTorch.
local Sequential = nn.class("Sequential")
function Sequential:__init(...)
  for i, m in ipairs({...}) do self:add_module(i - 1, m) end
end
function Sequential:forward(x)
  for _, name in ipairs(self._module_names) do x = self._modules[name](x) end
  return x
end
function Sequential:get(i) return self._modules[tostring(i - 1)] end -- 1-based, like Lua
nn.Sequential = Sequential

--- ModuleList(modules): children "0", "1", ...; indexable with list:get(i) (1-based).
local ModuleList = nn.class("ModuleList")
function ModuleList:__init(list)
  for i, m in ipairs(list or {}) do self:add_module(i - 1, m) end
end
function ModuleList:get(i) return self._modules[tostring(i - 1)] end
function ModuleList:len() return #self._module_names end
function ModuleList:append(m) return self:add_module(#self._module_names, m) end
nn.ModuleList = ModuleList

--- Linear(in, out[, bias = true]): y = x W^T + b, W [out, in]. PyTorch's
--- default initialisation: W and b uniform in +-1/sqrt(in).
local Linear = nn.class("Linear")
function Linear:__init(fan_in, fan_out, bias)
  self.in_features, self.out_features = fan_in, fan_out
  self:register_parameter("weight", init.default_uniform(sere.empty(fan_out, fan_in), fan_in))
  if bias ~= false then
    self:register_parameter("bias", init.default_uniform(sere.empty(fan_out), fan_in))
  else
    self:register_parameter("bias", nil)
  end
end
function Linear:forward(x)
  local y = x:matmul(self.weight:t())
  if self.bias then y = y + self.bias end
  return y
end
function Linear:extra_repr()
  return string.format("in=%d, out=%d, bias=%s", self.in_features, self.out_features, tostring(self.bias ~= nil))
end
nn.Linear = Linear

--- LayerNorm(dim[, eps = 1e-5]) over the last dim, with gain and bias.
local LayerNorm = nn.class("LayerNorm")
function LayerNorm:__init(dim, eps)
  self.dim, self.eps = dim, eps or 1e-5
  self:register_parameter("weight", sere.ones({dim}, {requires_grad = true}))
  self:register_parameter("bias", sere.zeros({dim}, {requires_grad = true}))
end
function LayerNorm:forward(x) return sere.layer_norm(x, self.weight, self.bias, self.eps) end
function LayerNorm:extra_repr() return string.format("%d, eps=%g", self.dim, self.eps) end
nn.LayerNorm = LayerNorm

local GELU = nn.class("GELU")
function GELU:forward(x) return sere.gelu(x) end
nn.GELU = GELU

local ReLU = nn.class("ReLU")
function ReLU:forward(x) return sere.relu(x) end
nn.ReLU = ReLU

--- Mlp(in, hidden[, out]): fc1 -> exact GELU -> fc2.
local Mlp = nn.class("Mlp")
function Mlp:__init(fan_in, hidden, fan_out)
  self:add_module("fc1", Linear(fan_in, hidden))
  self:add_module("act", GELU())
  self:add_module("fc2", Linear(hidden, fan_out or fan_in))
end
function Mlp:forward(x) return self.fc2(self.act(self.fc1(x))) end
nn.Mlp = Mlp

--- Attention(dim, heads[, qkv_bias = true]): multi-head self-attention over
--- [B, T, dim] with the [Q | K | V] feature layout of the reference (head j
--- owns features j*d .. (j+1)*d - 1 of each), one fused attention op.
local Attention = nn.class("Attention")
function Attention:__init(dim, heads, qkv_bias)
  assert(dim % heads == 0, "Attention: dim must be divisible by heads")
  self.dim, self.heads, self.head_dim = dim, heads, dim // heads
  self.scale = self.head_dim ^ -0.5
  self:add_module("qkv", Linear(dim, 3 * dim, qkv_bias ~= false))
  self:add_module("proj", Linear(dim, dim))
end
function Attention:forward(x)
  local b, t, d = table.unpack(x:shape())
  -- [B, T, 3D] -> [3, B, heads, T, head_dim]
  local qkv = self.qkv(x):reshape(b, t, 3, self.heads, self.head_dim):permute(3, 1, 4, 2, 5)
  local q, k, v = qkv:select(1, 1), qkv:select(1, 2), qkv:select(1, 3)
  local o = sere.attention(q, k, v, self.scale) -- [B, heads, T, head_dim]
  return self.proj(o:transpose(2, 3):reshape(b, t, d))
end
nn.Attention = Attention

--- DropPath(p): per-sample stochastic depth in training mode: keeps the
--- whole sample with probability 1 - p and rescales it by 1 / (1 - p).
--- keep = floor(1 - p + u), u ~ U[0, 1) from the default generator (or
--- self.generator); tests may set self.keep_fn(shape) to supply the flags.
local DropPath = nn.class("DropPath")
function DropPath:__init(p) self.p = p or 0 end
function DropPath:forward(x)
  if self.p == 0 or not self.training then return x end
  local shape = {x:shape()[1]}
  for _ = 2, x:dim() do shape[#shape + 1] = 1 end
  local keep
  if self.keep_fn then
    keep = self.keep_fn(shape)
  else
    keep = (sere.rand(shape, {generator = self.generator, device = x:device()}) + (1 - self.p)):floor()
  end
  return x * keep / (1 - self.p)
end
function DropPath:extra_repr() return string.format("p=%g", self.p) end
nn.DropPath = DropPath

--- Block(dim, heads[, opts]): pre-norm transformer block
--- x + DropPath(Attn(LN1(x))), then x + DropPath(MLP(LN2(x))).
--- opts: mlp_ratio (4), qkv_bias (true), drop_path (0), eps (1e-6).
local Block = nn.class("Block")
function Block:__init(dim, heads, opts)
  opts = opts or {}
  local eps = opts.eps or 1e-6
  self:add_module("norm1", LayerNorm(dim, eps))
  self:add_module("attn", Attention(dim, heads, opts.qkv_bias))
  self:add_module("drop_path", DropPath(opts.drop_path or 0))
  self:add_module("norm2", LayerNorm(dim, eps))
  self:add_module("mlp", Mlp(dim, math.floor(dim * (opts.mlp_ratio or 4))))
end
function Block:forward(x)
  x = x + self.drop_path(self.attn(self.norm1(x)))
  return x + self.drop_path(self.mlp(self.norm2(x)))
end
nn.Block = Block

--- Conv2d holding the weights of a convolution whose forward is done by a
--- specialised op (patch embedding, 1x1 convolution); PyTorch's default
--- initialisation (uniform +-1/sqrt(fan_in), fan_in = in * k * k).
local Conv2d = nn.class("Conv2d")
function Conv2d:__init(cin, cout, k, bias)
  self.cin, self.cout, self.k = cin, cout, k
  local fan_in = cin * k * k
  self:register_parameter("weight", init.default_uniform(sere.empty(cout, cin, k, k), fan_in))
  if bias ~= false then
    self:register_parameter("bias", init.default_uniform(sere.empty(cout), fan_in))
  else
    self:register_parameter("bias", nil)
  end
end
function Conv2d:forward(x)
  assert(self.k == 1, "Conv2d: only 1x1 convolutions run through forward; use PatchEmbed")
  -- x [B, C, ...spatial] -> W[:, :, 0, 0] x per position
  local b = x:shape()[1]
  local flat = x:reshape(b, self.cin, -1)
  local y = self.weight:view(self.cout, self.cin):matmul(flat)
  if self.bias then y = y + self.bias:view(self.cout, 1) end
  local shape = x:shape()
  shape[2] = self.cout
  return y:reshape(shape)
end
nn.Conv2d = Conv2d

--- PatchEmbed(patch, in_chans, dim): the stride-p convolution ("proj"),
--- [B, C, H, W] -> [B, D, H/p, W/p].
local PatchEmbed = nn.class("PatchEmbed")
function PatchEmbed:__init(patch, in_chans, dim)
  self.patch = patch
  self:add_module("proj", Conv2d(in_chans, dim, patch))
end
function PatchEmbed:forward(x) return sere.patch_embed(x, self.proj.weight, self.proj.bias, self.patch) end
nn.PatchEmbed = PatchEmbed

--- BatchNorm(C[, opts]) over dim 2 of [B, C, ...]: batch statistics in
--- training mode (running statistics updated with momentum), running
--- statistics in eval mode. opts: eps (1e-5), momentum (0.1), affine (true).
--- bn.sync = true makes it a SyncBatchNorm: training-mode statistics (and
--- their gradient terms) over the batches of all ranks of sere.dist
--- (dist.sync_batchnorm(model) sets it on every BatchNorm of a model).
local BatchNorm = nn.class("BatchNorm")
function BatchNorm:__init(c, opts)
  opts = opts or {}
  self.num_features, self.eps, self.momentum = c, opts.eps or 1e-5, opts.momentum or 0.1
  if opts.affine ~= false then
    self:register_parameter("weight", sere.ones({c}, {requires_grad = true}))
    self:register_parameter("bias", sere.zeros({c}, {requires_grad = true}))
  end
  self:register_buffer("running_mean", sere.zeros(c))
  self:register_buffer("running_var", sere.ones(c))
  self:register_buffer("num_batches_tracked", sere.tensor(0))
end
function BatchNorm:forward(x)
  if self.training then
    sere.no_grad(function() self.num_batches_tracked:add_(1) end)
  end
  return sere.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.training,
    self.momentum, self.eps, self.sync == true)
end
nn.BatchNorm = BatchNorm

-- model-specific modules
for k, v in pairs(require("sere.nn_vit")(nn)) do nn[k] = v end
for k, v in pairs(require("sere.nn_heads")(nn)) do nn[k] = v end

return nn
