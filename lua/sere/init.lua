-- sere — the Lua library's entry point: the C core (tensors, autograd, io)
-- plus the pieces written in Lua (no_grad, printing, testing helpers).
local core = require "sere.core"

local sere = {}
for k, v in pairs(core) do sere[k] = v end

-- Runs fn(...) with a mode (grad mode, autocast) set to `on` by `set`,
-- which returns the previous state, restoring that state even if fn raises
-- an error; returns fn's results.
local function with_mode(set, on, fn, ...)
  local prev = set(on)
  local res = table.pack(pcall(fn, ...))
  set(prev)
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

--- sere.no_grad(fn, ...): runs fn without recording gradients.
function sere.no_grad(fn, ...) return with_mode(core.set_grad_enabled, false, fn, ...) end

--- sere.enable_grad(fn, ...): runs fn recording gradients (inside a no_grad region).
function sere.enable_grad(fn, ...) return with_mode(core.set_grad_enabled, true, fn, ...) end

--- sere.autocast(fn, ...): runs fn in mixed precision: matrix products,
--- attention and the patch embedding on bf16 copies of f32 operands, the
--- norms, softmaxes and losses in f32 (see docs/lua-api.md).
function sere.autocast(fn, ...) return with_mode(core.set_autocast_enabled, true, fn, ...) end

sere.testing = require "sere.testing"

--- sere.io: tensors to and from safetensors files (see docs/lua-api.md).
sere.io = {save = core.io_save, load = core.io_load}

--- sere.io.exists(path): true if path names a file that can be opened for reading.
function sere.io.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

core._tensor_mt.__tostring = require("sere.print").tostring

--- sere.image, sere.augment, sere.data: the image pipeline's building blocks
--- (C functions registered as core.image_*, core.augment_*, core.dataset_*).
local function prefixed(prefix)
  local t = {}
  for k, v in pairs(core) do
    local name = k:match("^" .. prefix .. "_(.+)$")
    if name then t[name] = v end
  end
  return t
end
sere.image = prefixed("image")
sere.augment = prefixed("augment")
sere.data = prefixed("dataset") -- require "sere.data" adds the Loader and recipes to this table

--- sere.dist: ranks and collectives of a data-parallel run (rank 0 of 1 when started alone).
sere.dist = require "sere.dist"

--- sere.cuda: the GPU and its caching allocator (tensors move with t:cuda() / t:to("cuda")).
sere.cuda = {
  is_available = core.cuda_is_available,
  device_count = core.cuda_device_count,
  compiled = core.cuda_compiled,
  emulated = core.cuda_emulated,
  device_name = core.cuda_device_name,
  mem_info = core.cuda_mem_info,
  set_device = core.cuda_set_device,
  synchronize = core.cuda_synchronize,
  memory_stats = core.cuda_memory_stats,
  reset_peak_memory_stats = core.cuda_reset_peak_memory_stats,
  empty_cache = core.cuda_empty_cache,
  set_poison = core.cuda_set_poison,
}

return sere
