-- test_model_tiny.lua — one complete iBOT + SERE training-loss evaluation
-- of a tiny model (D 32, depth 2, 2 heads, 2 global 64x64 + 2 local 32x32
-- crops of 2 images, masks, overlap grids, alpha 0.2, beta 0.5) against
-- the PyTorch reference (tests/data/model/model_tiny.safetensors): every
-- loss term, the updated centres, the BatchNorm buffers of both networks
-- and the gradient of the total loss for EVERY student parameter. sere
-- computes with both exact shortcuts (features sampled before forming
-- relations; the prototype layer only at masked tokens), so this also
-- shows them equal to the reference's naive computation end to end.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local objective = require "sere.objective"
local R = dofile("tests/lua/refdata.lua")

-- f32 through two blocks, heads, softmaxes at temperatures down to 0.045
-- and the alignment: relative 2e-4 (absolute 2e-6 for the tiny channel
-- head gradients, which are 1e-5 .. 1e-3 here because sigma is hard-wired).
local ATOL, RTOL = 2e-6, 2e-4

local t, meta = R.load("model_tiny")
local cfg_json = meta.config
local setup = R.tiny_setup(t, meta)
local student, teacher, state, cfg, batch = setup.student, setup.teacher, setup.state, setup.cfg, setup.batch

local total, terms = objective.compute(student, teacher, batch, state, cfg)

T.test("configuration matches the reference file", function()
  T.close(cfg.alpha, 0.2, 0, 0); T.close(cfg.beta, 0.5, 0, 0)
  T.close(cfg.teacher_temp, 0.04 + 0.03 * 5 / 29, 1e-12, 0)
  assert(cfg_json:find('"epoch": 5'), "the reference was made at epoch 5")
end)

T.test("every loss term and the total", function()
  local want = {total = total, ibot = terms.ibot, cls = terms.cls, mim = terms.mim, pixel = terms.pixel,
    channel = terms.channel}
  for name, got in pairs(want) do
    T.close(got:item(), t["output.loss." .. name]:item(), 1e-6, RTOL, name)
  end
  local pt, ct = t["output.loss.pixel_terms"]:totable(), t["output.loss.channel_terms"]:totable()
  for i, v in ipairs(terms.pixel_terms) do T.close(v:item(), pt[i], 1e-6, RTOL, "pixel term " .. i) end
  for i, v in ipairs(terms.channel_terms) do T.close(v:item(), ct[i], 1e-6, RTOL, "channel term " .. i) end
end)

T.test("class logits of both networks", function()
  sere.testing.assert_close(terms.teacher_cls, t["output.teacher.cls"], 1e-5, RTOL, "teacher cls")
  sere.testing.assert_close(terms.student_cls, t["output.student.cls"], 1e-5, RTOL, "student cls")
end)

T.test("centres after the update", function()
  sere.testing.assert_close(state.center, t["output.center"], 1e-6, 1e-5, "center")
  sere.testing.assert_close(state.center2, t["output.center2"], 1e-6, 1e-5, "center2")
end)

T.test("BatchNorm running buffers of both networks", function()
  for prefix, net in pairs({["after.student."] = student, ["after.teacher."] = teacher}) do
    local sd = net:state_dict()
    local n = 0
    for name, want in pairs(R.strip(t, prefix)) do
      sere.testing.assert_close(sd[name], want, 1e-5, RTOL, prefix .. name)
      n = n + 1
    end
    assert(n > 0, "no buffers compared for " .. prefix)
  end
end)

T.test("gradient of the total loss for every student parameter", function()
  total:backward()
  local n = R.check_param_grads(student, t, "grad.student.", ATOL, RTOL)
  T.eq(n, 59, "parameters compared")
  for _, p in ipairs(teacher:parameters()) do assert(p.grad == nil, "the teacher got a gradient") end
end)

T.finish()
