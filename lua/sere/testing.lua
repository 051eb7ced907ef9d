-- sere.testing — finite-difference gradient checks and closeness checks,
-- used by the test suite and available to anyone writing a new op in Lua.
local core = require "sere.core"

local testing = {}

local function flat_values(t)
  local flat = t:detach():float():reshape(-1):totable()
  return flat
end

--- Largest |a - b| / (atol + rtol * |b|) over all elements (<= 1 means close).
function testing.max_violation(a, b, atol, rtol)
  local fa, fb = flat_values(a), flat_values(b)
  assert(#fa == #fb, "max_violation: element counts differ")
  local worst, at = 0, nil
  for i = 1, #fa do
    local d = math.abs(fa[i] - fb[i])
    local v = d / (atol + rtol * math.abs(fb[i]))
    if fa[i] ~= fa[i] or fb[i] ~= fb[i] then
      if not (fa[i] ~= fa[i] and fb[i] ~= fb[i]) then v = math.huge end
    end
    if v > worst then worst, at = v, i end
  end
  return worst, at, at and fa[at], at and fb[at]
end

--- Raises an error unless a and b (tensors of equal shape) are close:
--- |a - b| <= atol + rtol * |b| elementwise.
function testing.assert_close(a, b, atol, rtol, what)
  atol, rtol = atol or 1e-5, rtol or 1e-5
  local sa, sb = table.concat(a:shape(), "x"), table.concat(b:shape(), "x")
  if sa ~= sb then error(string.format("%s: shapes differ: %s vs %s", what or "assert_close", sa, sb), 2) end
  local worst, at, va, vb = testing.max_violation(a, b, atol, rtol)
  if worst > 1 then
    error(string.format("%s: not close at flat index %d: %.9g vs %.9g (atol %g, rtol %g)",
      what or "assert_close", at, va, vb, atol, rtol), 2)
  end
end

--- Finite-difference check of the gradient of fn(inputs...) with respect
--- to every float input that requires grad. The output is reduced to a
--- scalar by a fixed random projection w (so every output element
--- matters): the analytic gradient comes from y:backward(w), the numeric
--- one from central differences of sum(y * w) accumulated in double.
--- opts: eps (1e-3), atol (1e-3), rtol (1e-2), max_elems (elements checked
--- per input, sampled evenly; default all up to 200), seed.
--- Returns true, or raises an error naming the input and element.
function testing.gradcheck(fn, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-3, opts.atol or 1e-3, opts.rtol or 1e-2
  local max_elems = opts.max_elems or 200
  for _, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then x.grad = nil end
  end
  local y = fn(table.unpack(inputs))
  local w = core.randn(y:shape(), {generator = core.Generator(opts.seed or 1234)})
  local wv = flat_values(w)
  y:backward(w:to(y:dtype()))

  local function objective()
    local out = core.set_grad_enabled(false)
    local ok, yy = pcall(fn, table.unpack(inputs))
    core.set_grad_enabled(out)
    if not ok then error(yy, 0) end
    local yv, s = flat_values(yy), 0
    for i = 1, #yv do s = s + yv[i] * wv[i] end
    return s
  end

  for k, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then
      if not x.grad then error(string.format("gradcheck: input %d got no gradient", k), 2) end
      local analytic = flat_values(x.grad)
      local n = x:numel()
      local step = math.max(1, n // max_elems)
      -- perturb through a flat view of the same storage (x must be contiguous)
      local flat = x:detach():view(-1)
      for i = 1, n, step do
        local orig = flat[i]
        flat[i] = orig + eps
        local fp = objective()
        flat[i] = orig - eps
        local fm = objective()
        flat[i] = orig
        local numeric = (fp - fm) / (2 * eps)
        local err = math.abs(numeric - analytic[i])
        if err > atol + rtol * math.abs(numeric) then
          error(string.format("gradcheck: input %d element %d: analytic %.7g, numeric %.7g (atol %g, rtol %g)",
            k, i, analytic[i], numeric, atol, rtol), 2)
        end
      end
    end
  end
  return true
end

return testing
