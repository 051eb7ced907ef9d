-- test_loss.lua — sere.loss against the PyTorch reference data
-- (tests/data/model/): overlap grids, two-pass relation alignment and its
-- feature-sampling shortcut, teacher temperatures, the iBOT [CLS] and
-- masked-patch losses with their centres, the SERE pixel and channel
-- losses; values and gradients. Tolerances as in test_model.lua.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local nn = require "sere.nn"
local loss = require "sere.loss"
local R = dofile("tests/lua/refdata.lua")

local ATOL, RTOL = 1e-5, 1e-4
local close = sere.testing.assert_close

T.test("overlap grids from crop mappings (flips, nesting, no overlap)", function()
  local t = R.load("overlap_grid")
  for _, s in ipairs({13, 6}) do
    local ga, gb = loss.overlap_grids(t["input.mapping_a"], t["input.mapping_b"], s)
    close(ga, t["output.grid_a_" .. s], 1e-6, 1e-5, "grid a " .. s)
    close(gb, t["output.grid_b_" .. s], 1e-6, 1e-5, "grid b " .. s)
  end
end)

T.test("two-pass alignment (keys first) matches the reference", function()
  local t = R.load("align_gg")
  local r = R.input(t, "input.relation", true)
  local out = loss.aligned_relation(r, {4, 4}, t["input.grid_rows"], t["input.grid_cols"])
  close(out, t["output.aligned"], ATOL, RTOL, "aligned")
  out:backward(t["upstream.aligned"])
  close(r.grad, t["grad.input.relation"], ATOL, RTOL, "grad")
end)

T.test("local/global alignment matches the reference", function()
  local t = R.load("align_lg")
  local tr = R.input(t, "input.teacher_relation", true)
  local sr = R.input(t, "input.student_relation", true)
  local g, l = t["input.grid_global"], t["input.grid_local"]
  local ta = loss.aligned_relation(tr, {4, 4}, g, g)
  local sa = loss.aligned_relation(sr, {2, 2}, l, l)
  close(ta, t["output.teacher_aligned"], ATOL, RTOL, "teacher")
  close(sa, t["output.student_aligned"], ATOL, RTOL, "student")
  local total = (ta * t["upstream.teacher_aligned"]):sum() + (sa * t["upstream.student_aligned"]):sum()
  total:backward()
  close(tr.grad, t["grad.input.teacher_relation"], ATOL, RTOL, "teacher grad")
  close(sr.grad, t["grad.input.student_relation"], ATOL, RTOL, "student grad")
end)

T.test("shortcut 1: sampling features first equals the two-pass alignment (values and gradients)", function()
  sere.manual_seed(3)
  local t = R.load("overlap_grid")
  -- grids of 8 pairs at S = 6 (rows) and S = 13 (cols): overlap, flips, nesting, no overlap
  local rows, cols = loss.overlap_grids(t["input.mapping_a"], t["input.mapping_b"], 6), nil
  cols = loss.overlap_grids(t["input.mapping_a"], t["input.mapping_b"], 13)
  for _, heads in ipairs({1, 3}) do
    local z1 = sere.randn({8, 6, 20}, {requires_grad = true}) -- [B, D, N] on a 4x5 map
    local z2 = z1:detach():clone(); z2.requires_grad = true
    local naive = loss.aligned_relation(loss.pixel_relation(z1, heads), {4, 5}, rows, cols)
    local fast = loss.aligned_pixel_relation(z2, {4, 5}, heads, rows, cols)
    close(fast, naive, 1e-5, 1e-4, "values")
    local up = sere.randn(naive:shape())
    naive:backward(up)
    fast:backward(up)
    close(z2.grad, z1.grad, 1e-5, 1e-4, "gradients")
  end
end)

T.test("teacher temperature schedules", function()
  local t = R.load("schedule")
  local cases = {
    vit_small_class = {0.04, 0.07, 30, 0}, vit_small_patch = {0.04, 0.07, 30, 0},
    vit_base_class = {0.04, 0.07, 50, 0}, patch_pred_start_5 = {0.04, 0.07, 30, 5},
  }
  for name, c in pairs(cases) do
    local want = t["output." .. name]:totable()
    for e = 0, 99 do
      T.close(loss.teacher_temperature(e, c[1], c[2], c[3], c[4]), want[e + 1], 1e-7, 1e-6, name .. " epoch " .. e)
    end
  end
end)

T.test("iBOT [CLS] loss and centre update", function()
  local t, meta = R.load("loss_cls")
  local s = R.input(t, "input.student_cls", true)
  local center = t["input.center"]:clone()
  local cfg = meta.config
  local tt = tonumber(cfg:match('"teacher_temp": ([%d.e-]+)'))
  local ts = tonumber(cfg:match('"student_temp": ([%d.e-]+)'))
  local l = loss.ibot_cls_loss(t["input.teacher_cls"], s, center, 2, tt, ts)
  close(l, t["output.loss"], ATOL, RTOL, "loss")
  loss.update_center(center, t["input.teacher_cls"]:mean(1, true), 0.9)
  close(center, t["output.center"], 1e-6, 1e-5, "centre")
  l:backward()
  close(s.grad, t["grad.input.student_cls"], ATOL, RTOL, "grad")
end)

T.test("iBOT masked-patch loss and patch centre update", function()
  local t, meta = R.load("loss_mim")
  local s = R.input(t, "input.student_patch", true)
  local cfg = meta.config
  local tt = tonumber(cfg:match('"teacher_patch_temp": ([%d.e-]+)') or cfg:match('"teacher_temp": ([%d.e-]+)'))
  local ts = tonumber(cfg:match('"student_temp": ([%d.e-]+)'))
  local l = loss.ibot_mim_loss(t["input.teacher_patch"], s, t["input.masks"], t["input.center2"], tt, ts)
  close(l, t["output.loss"], ATOL, RTOL, "loss")
  local c2 = t["input.center2"]:clone()
  loss.update_center(c2, t["input.teacher_patch"]:mean(2):mean(1, true), 0.9)
  close(c2, t["output.center2"], 1e-6, 1e-5, "centre")
  l:backward()
  close(s.grad, t["grad.input.student_patch"], ATOL, RTOL, "grad")
end)

T.test("shortcut 2: the patch head at masked tokens only equals the full computation", function()
  sere.manual_seed(5)
  local head_s = nn.IbotHead(8, 12, {hidden_dim = 16, bottleneck_dim = 6, norm_last_layer = false})
  local head_t = nn.IbotHead(8, 12, {hidden_dim = 16, bottleneck_dim = 6})
  local fs = sere.randn(6, 10, 8):requires_grad_()
  local ft = sere.randn(6, 10, 8)
  local masks = sere.rand(6, 9):lt(0.4)
  masks[2] = false -- an image with nothing masked
  local c2 = sere.randn(1, 1, 12):mul(0.1)
  local function run(shortcut)
    head_s:zero_grad()
    fs.grad = nil
    local sfeat, tfeat = head_s:features(fs), sere.no_grad(function() return head_t:features(ft) end)
    if shortcut then
      return loss.ibot_patch_loss(head_s, head_t, tfeat, sfeat, masks, c2, 0.06, 0.1)
    end
    local sp = head_s.last_layer2(sfeat:narrow(2, 2, 9))
    local tp = sere.no_grad(function() return head_t.last_layer2(tfeat:narrow(2, 2, 9)) end)
    return loss.ibot_mim_loss(tp, sp, masks, c2, 0.06, 0.1), tp:mean(2)
  end
  local l1, mean1 = run(false)
  l1:backward()
  local grads = {}
  for name, p in head_s:named_parameters() do grads[name] = p.grad and p.grad:clone() end
  local gx = fs.grad:clone()
  local l2, mean2 = run(true)
  l2:backward()
  close(l2, l1, 1e-6, 1e-5, "loss")
  close(mean2, mean1, 1e-6, 1e-5, "mean teacher patch logits (centre)")
  close(fs.grad, gx, 1e-6, 1e-4, "input gradient")
  for name, p in head_s:named_parameters() do
    if grads[name] then close(p.grad, grads[name], 1e-6, 1e-4, "grad " .. name) end
  end
end)

T.test("SERE pixel loss (global/global and local/global terms)", function()
  local t = R.load("loss_pixel")
  local sgg = R.input(t, "input.student_gg", true)
  local sloc = R.input(t, "input.student_raw_local", true)
  local gl, gg = t["input.grids_lg_local"], t["input.grids_lg_global"]
  local l_n, b = 2, 2
  local traw = t["input.teacher_raw_global"]:chunk(2, 1)
  local sraw = sloc:chunk(l_n, 1)
  local pairs_lg = {}
  for g = 1, 2 do
    for l = 1, l_n do
      local i = (g - 1) * l_n + l
      pairs_lg[i] = {loss.aligned_relation(traw[g], {4, 4}, gg[i], gg[i]), loss.aligned_relation(sraw[l], {2, 2}, gl[i], gl[i])}
    end
  end
  local l, terms = loss.pixel_loss(t["input.teacher_gg"], sgg, pairs_lg, 2, 0.5)
  close(l, t["output.loss"], ATOL, RTOL, "loss")
  local want = t["output.terms"]:totable()
  for i, term in ipairs(terms) do T.close(term:item(), want[i], 1e-5, 1e-4, "term " .. i) end
  assert(b == 2)
  l:backward()
  close(sgg.grad, t["grad.input.student_gg"], ATOL, RTOL, "grad gg")
  close(sloc.grad, t["grad.input.student_raw_local"], ATOL, RTOL, "grad local")
end)

T.test("SERE channel loss", function()
  local t = R.load("loss_channel")
  local sg = R.input(t, "input.student_global", true)
  local sl = R.input(t, "input.student_local", true)
  local l, terms = loss.channel_loss(t["input.teacher"], sg, sl, 2, 0.1)
  close(l, t["output.loss"], ATOL, RTOL, "loss")
  local want = t["output.terms"]:totable()
  for i, term in ipairs(terms) do T.close(term:item(), want[i], 1e-5, 1e-4, "term " .. i) end
  l:backward()
  close(sg.grad, t["grad.input.student_global"], ATOL, RTOL, "grad global")
  close(sl.grad, t["grad.input.student_local"], ATOL, RTOL, "grad local")
end)

T.test("total loss weighting", function()
  local l = loss.total_loss(sere.tensor(2.0), sere.tensor(3.0), sere.tensor(5.0), 0.2, 0.5)
  T.close(l:item(), 2 * 1.65 + 0.2 * 3 + 0.5 * 5, 1e-6, 1e-6)
end)

T.finish()
