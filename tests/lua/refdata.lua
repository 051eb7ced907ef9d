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

--- The tiny model of tests/data/model/model_tiny.safetensors, set up for
--- objective.compute on `device` ("cpu" default): student and teacher
--- networks with the reference's weights, the input centres (state), the
--- loss configuration and the batch.
function R.tiny_setup(t, meta, device)
  device = device or "cpu"
  local nn, loss = require "sere.nn", require "sere.loss"
  local function cfg_num(key) return tonumber(meta.config:match('"' .. key .. '": ([%d.e-]+)')) end
  local function network(prefix, student)
    local vit = nn.VisionTransformer({embed_dim = 32, depth = 2, heads = 2, patch_size = 16, img_size = 64,
      masked_im_modeling = student})
    local head = nn.IbotHead(32, 128, {hidden_dim = 64, bottleneck_dim = 32, norm_last_layer = not student})
    local net = nn.MultiCrop(vit, head)
    net:load_state_dict(R.strip(t, prefix))
    return net:to(device)
  end
  local batch = {}
  for _, k in ipairs({"global_crops", "local_crops", "masks", "grids_gg_rows", "grids_gg_cols", "grids_lg_local",
    "grids_lg_global"}) do
    batch[k] = t["input." .. k]:to(device)
  end
  return {
    student = network("student.", true), teacher = network("teacher.", false),
    state = {center = t["input.center"]:clone():to(device), center2 = t["input.center2"]:clone():to(device)},
    cfg = {
      n_global = 2, heads = 2, alpha = cfg_num("alpha"), beta = cfg_num("beta"),
      teacher_temp = loss.teacher_temperature(5, 0.04, 0.07, 30),
      teacher_patch_temp = loss.teacher_temperature(5, 0.05, 0.08, 30),
      student_temp = 0.1, pixel_temp = 0.5, channel_temp = 0.1, center_momentum = 0.9,
    },
    batch = batch,
  }
end

return R
