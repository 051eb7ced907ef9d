-- test_cuda_model.lua — the complete tiny iBOT + SERE training-loss
-- evaluation of test_model_tiny.lua, on the GPU: same reference file, same
-- networks and crops moved with :to("cuda"), and every loss term, the
-- centres, the BatchNorm buffers and the gradient of every student
-- parameter must match the PyTorch reference (and so the CPU run) at the
-- CPU test's tolerances.
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"
local objective = require "sere.objective"
local R = dofile("tests/lua/refdata.lua")

local NAMES = {"loss terms", "centres", "BatchNorm buffers", "student gradients"}
if not P.available then
  for _, n in ipairs(NAMES) do T.skip("cuda tiny model: " .. n, P.reason) end
  T.finish()
  return
end

local ATOL, RTOL = 2e-6, 2e-4 -- as test_model_tiny.lua

local t, meta = R.load("model_tiny")
local setup = R.tiny_setup(t, meta, "cuda")
local student, teacher, state, cfg, batch = setup.student, setup.teacher, setup.state, setup.cfg, setup.batch

local ok, total, terms = pcall(objective.compute, student, teacher, batch, state, cfg)

local function test(name, fn)
  T.test("cuda tiny model: " .. name, function()
    if not ok then error("objective.compute on the GPU failed: " .. tostring(total), 0) end
    fn()
  end)
end

test("loss terms", function()
  T.eq(total:device(), "cuda")
  local want = {total = total, ibot = terms.ibot, cls = terms.cls, mim = terms.mim, pixel = terms.pixel,
    channel = terms.channel}
  for name, got in pairs(want) do T.close(got:item(), t["output.loss." .. name]:item(), 1e-6, RTOL, name) end
  sere.testing.assert_close(terms.teacher_cls:cpu(), t["output.teacher.cls"], 1e-5, RTOL, "teacher cls")
  sere.testing.assert_close(terms.student_cls:cpu(), t["output.student.cls"], 1e-5, RTOL, "student cls")
end)

test("centres", function()
  sere.testing.assert_close(state.center:cpu(), t["output.center"], 1e-6, 1e-5, "center")
  sere.testing.assert_close(state.center2:cpu(), t["output.center2"], 1e-6, 1e-5, "center2")
end)

test("BatchNorm buffers", function()
  for prefix, net in pairs({["after.student."] = student, ["after.teacher."] = teacher}) do
    local sd = net:state_dict()
    for name, want in pairs(R.strip(t, prefix)) do
      sere.testing.assert_close(sd[name]:cpu(), want, 1e-5, RTOL, prefix .. name)
    end
  end
end)

test("student gradients", function()
  total:backward()
  T.eq(R.check_param_grads(student, t, "grad.student.", ATOL, RTOL), 59, "parameters compared")
  for _, p in ipairs(student:parameters()) do T.eq(p:device(), "cuda") end
end)

T.finish()
