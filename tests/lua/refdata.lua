-- refdata.lua — helpers for tests that match the PyTorch reference data in
-- tests/data/model/ (written by tests/reference/make_model_data.py; the
-- layout is in tests/reference/README.md).
local sere = require "sere"

local R = {}

--- Loads tests/data/model/<name>.safetensors -> tensors, metadata.
function R.load(name)
  return sere.io.load("tests/data/model/" .. name .. ".safetensors")
end

--- The tensors whose names start with prefix, with the prefix removed.
function R.strip(t, prefix)
  local out = {}
  for k, v in pairs(t) do
    if k:sub(1, #prefix) == prefix then out[k:sub(#prefix + 1)] = v end
  end
  return out
end

--- Input tensor `name` as a fresh leaf that requires grad (when asked).
function R.input(t, name, requires_grad)
  local x = t[name]:clone()
  if requires_grad then x.requires_grad = true end
  return x
end

--- Backpropagates sum_y sum(outputs[y] * upstream[y]) for the named outputs.
function R.backward(outputs, t, prefix)
  local total
  for name, y in pairs(outputs) do
    local up = t[prefix .. "upstream." .. name]
    assert(up, "no upstream." .. name)
    local s = (y * up):sum()
    total = total and total + s or s
  end
  total:backward()
end

--- Compares every parameter gradient stored under prefix "grad.param."
--- (or `grad_prefix`) with the module's .grad; parameters with no stored
--- gradient must have none (or an all-zero one).
function R.check_param_grads(module, t, grad_prefix, atol, rtol)
  local stored = R.strip(t, grad_prefix)
  local n = 0
  for name, p in module:named_parameters() do
    local want = stored[name]
    if want then
      assert(p.grad, "no gradient for " .. name)
      sere.testing.assert_close(p.grad, want, atol, rtol, "grad of " .. name)
      n = n + 1
    elseif p.grad then
      assert(p.grad:abs():max():item() == 0, "unexpected gradient for " .. name)
    end
  end
  return n
end

return R
