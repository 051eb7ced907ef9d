-- parity.lua — the CUDA parity harness (after ggml's test-backend-ops):
-- runs an op on the CPU (the reference) and on the GPU from the same
-- random inputs, forward and backward, and compares every output and every
-- input gradient by normalised error.
--
--   local P = dofile("tests/lua/parity.lua")
--   P.test(T, "name", fn)    -- any other test that needs a device (skipped without)
--   P.check(T, {name = "layer_norm [7, 37, 64]",
--               inputs = {x, w, b},          -- CPU tensors, random and non-zero
--               fn = function(x, w, b) return sere.nn.functional.layer_norm(x, w, b) end,
--               grad = true,                 -- or {true, false, ...} per input
--               tol = 1e-5, grad_tol = 1e-5, -- normalised error bounds (defaults below)
--               dtype = "bf16"})             -- optional: inputs converted first
--
-- Each input becomes a fresh leaf on each device; fn runs on both. The
-- outputs (a tensor or several) must be CUDA tensors of the reference's
-- shape and dtype, and agree within `tol`, measured as
--   max |gpu - cpu| / max(max |cpu|, 1e-6)
-- (NaN anywhere in the GPU result fails, unless the reference has it in
-- the same place). With grad, the first float output is back-propagated
-- with the same random upstream gradient on both devices and every input's
-- gradient compared within `grad_tol`. GPU memory is poisoned (NaN bytes)
-- while the GPU side runs, so elements a kernel forgot to write show up.
-- In the emulator build an op that launched no kernel fails (it fell back
-- to reading device memory on the host, which a real GPU would not allow).
--
-- Without a usable device every check is reported as skipped, with the
-- reason, never as passed.
local sere = require "sere"

local P = {}

P.available = sere.cuda.is_available()
P.reason = sere.cuda.compiled() and "no CUDA device on this machine"
  or "this sere was built without CUDA"

-- f32 bounds: kernels reorder sums (tree reductions, fused passes), so a
-- few ulps of the largest value are expected; bf16 results round to 8 bits.
P.F32_TOL = 1e-5
P.BF16_TOL = 1e-2

local gen = sere.Generator(20261126)

--- Random normal CPU tensor with no exact zeros (a zero hides sign and
--- scaling bugs); opts.dtype as for sere.randn.
function P.randn(shape, opts)
  local t = sere.randn(shape, {generator = gen, dtype = opts and opts.dtype})
  return t + (t:ge(0):float() * 2 - 1) * 1e-3
end

local core = require "sere.core"
--- Kernels launched so far (emulator builds; 0 elsewhere).
function P.launches()
  return sere.cuda.emulated() and core.cuda_launch_count() or 0
end
local launches = P.launches

--- "[2, 3]" for a shape array, for test names.
function P.shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end

--- A test that needs a device: run as T.test(name, fn), or recorded as
--- skipped (with the reason) where there is none.
function P.test(T, name, fn)
  if P.available then T.test(name, fn) else T.skip(name, P.reason) end
end

local function pack(...)
  local n = select("#", ...)
  local first = ...
  if n == 1 and type(first) == "table" and not sere.is_tensor(first) then return first end
  return {...}
end

local function normalised_error(got, ref)
  local g = got:detach():cpu():float():reshape(-1):totable()
  local r = ref:detach():float():reshape(-1):totable()
  local scale, worst, at = 1e-6, 0, nil
  for i = 1, #r do
    if r[i] == r[i] and math.abs(r[i]) > scale and math.abs(r[i]) < math.huge then scale = math.abs(r[i]) end
  end
  for i = 1, #r do
    local a, b = g[i], r[i]
    local d
    if a ~= a or b ~= b then d = (a ~= a and b ~= b) and 0 or math.huge
    elseif a == b then d = 0
    else d = math.abs(a - b) / scale end
    if d > worst then worst, at = d, i end
  end
  return worst, at, at and g[at], at and r[at]
end

local function compare(what, got, ref, tol)
  if not sere.is_tensor(got) then error(what .. ": GPU side returned " .. type(got), 0) end
  if got:device() ~= "cuda" then error(what .. ": result is on " .. got:device() .. ", not cuda", 0) end
  local sg, sr = table.concat(got:shape(), "x"), table.concat(ref:shape(), "x")
  if sg ~= sr then error(string.format("%s: shape %s, reference %s", what, sg, sr), 0) end
  if got:dtype() ~= ref:dtype() then
    error(string.format("%s: dtype %s, reference %s", what, got:dtype(), ref:dtype()), 0)
  end
  local exact = ref:dtype() ~= "f32" and ref:dtype() ~= "bf16"
  local err, at, a, b = normalised_error(got, ref)
  if err > (exact and 0 or tol) then
    error(string.format("%s: normalised error %.3g > %.3g (flat index %d: gpu %.9g, cpu %.9g)",
      what, err, exact and 0 or tol, at, a, b), 0)
  end
  return err
end

local function is_float(t) return t:dtype() == "f32" or t:dtype() == "bf16" end

--- One parity case; see the header. Returns nothing; records a pass, a
--- failure or a skip on T.
function P.check(T, spec)
  local name = "cuda parity: " .. spec.name
  if not P.available then
    T.skip(name, P.reason)
    return
  end
  T.test(name, function()
    local tol = spec.tol or (spec.dtype == "bf16" and P.BF16_TOL or P.F32_TOL)
    local grad_tol = spec.grad_tol or tol
    local cpu_in, gpu_in = {}, {}
    for i, x in ipairs(spec.inputs) do
      if spec.dtype and is_float(x) then x = x:to(spec.dtype) end
      local wants = spec.grad and is_float(x) and (spec.grad == true or spec.grad[i])
      cpu_in[i] = x:detach():clone()
      gpu_in[i] = x:detach():cuda()
      if wants then
        cpu_in[i].requires_grad = true
        gpu_in[i].requires_grad = true
      end
    end
    local ref = pack(spec.fn(table.unpack(cpu_in, 1, #spec.inputs)))
    sere.cuda.set_poison(true)
    local ok, err = pcall(function()
      local before = launches()
      local out = pack(spec.fn(table.unpack(gpu_in, 1, #spec.inputs)))
      if sere.cuda.emulated() and launches() == before then
        error(spec.name .. ": no kernel was launched (the op ran on the host)", 0)
      end
      if #out ~= #ref then error(string.format("%d outputs, reference %d", #out, #ref), 0) end
      for k = 1, #ref do compare(string.format("%s output %d", spec.name, k), out[k], ref[k], tol) end
      if not spec.grad then return end
      for k = 1, #ref do
        if is_float(ref[k]) and ref[k].requires_grad then
          local g = P.randn(ref[k]:shape()):to(ref[k]:dtype())
          ref[k]:backward(g)
          out[k]:backward(g:cuda())
          break
        end
      end
      for i, x in ipairs(cpu_in) do
        if x.requires_grad then
          if not gpu_in[i].grad then error(string.format("%s: no gradient for input %d on the GPU", spec.name, i), 0) end
          compare(string.format("%s gradient of input %d", spec.name, i), gpu_in[i].grad, x.grad, grad_tol)
        end
      end
    end)
    sere.cuda.set_poison(false)
    if not ok then error(err, 0) end
  end)
end

return P
