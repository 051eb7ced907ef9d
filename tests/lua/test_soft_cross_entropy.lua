-- test_soft_cross_entropy.lua — sere.soft_cross_entropy (fused
-- -sum softmax((t - c) / Tt) * log_softmax(s / Ts) per row): loss and
-- student gradient against PyTorch (tests/data/ops/soft_cross_entropy.safetensors,
-- from tests/reference/ops_soft_cross_entropy.py) for K = 1, 7, 169 and 8192,
-- logits rising along the row, large logits and tiny temperatures; against
-- sere's own softmax composition on strided, broadcast-centre and bf16
-- inputs; finite-difference gradients; the teacher-side rules; errors.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

-- The PyTorch reference is float64 evaluated from the f32 inputs; sere
-- computes in f32. REF_TOL is relative to each result's largest magnitude
-- (at least 1), as f32 logits divided by small temperatures lose absolute
-- precision: PyTorch's own f32 error is ~1e-5 at K = 8192 and 3.3e-4 on
-- the "big" case (|s / Ts| ~ 1e4, recorded in the file), so those get
-- BIG_TOL; a wrong term is off by far more.
local REF_TOL, REF_RTOL = 2e-5, 1e-4
local BIG_TOL = 1e-3
local COMP_TOL, COMP_RTOL = 2e-5, 1e-4
local BF16_TOL = 2 ^ -7

sere.manual_seed(7)

local function maxabs(t) return t:detach():float():abs():max():item() end

-- |got - want| <= tol * max(max|want|, 1) + rtol * |want| elementwise.
local function close(got, want, tol, rtol, what)
  sere.testing.assert_close(got, want, tol * math.max(maxabs(want), 1), rtol, what)
end

local function leaf(t)
  t = t:detach():contiguous()
  t.requires_grad = true
  return t
end

-- tests/reference/ops_soft_cross_entropy.py's hashed(): exact in double,
-- rounded once to f32.
local function hashed(n, seed, scale, offset)
  scale, offset = scale or 1, offset or 0
  local v = {}
  for i = 0, n - 1 do
    v[i + 1] = offset + scale * (((i * 2654435761 + seed * 40503) % 4294967296) / 4294967296 * 4 - 2)
  end
  return sere.tensor(v)
end

local function ramp()
  local v = {}
  for i = 0, 599 do v[i + 1] = i / 7 end
  return sere.tensor(v):view(2, 300)
end

-- The loss as PyTorch's reference composes it, from sere's ops.
local function composed(s, t, c, ts, tt)
  local tc = c and t - c or t
  return -((tc / tt):softmax(-1) * (s / ts):log_softmax(-1)):sum(-1)
end

-- Loss and student gradient of fn(s) for upstream gradient g.
local function run(fn, s, g)
  s = leaf(s)
  local loss = fn(s)
  loss:backward(g)
  return loss:detach(), s.grad
end

local ref, meta = sere.io.load("tests/data/ops/soft_cross_entropy.safetensors")

local function check_case(name, s, t, c, g, tol)
  local ts, tt = tonumber(meta[name .. ".student_temp"]), tonumber(meta[name .. ".teacher_temp"])
  local loss, ds = run(function(x) return sere.soft_cross_entropy(x, t, c, ts, tt) end, s, g)
  local cols = sere.arange(1, s:shape()[s:dim()] + 1, tonumber(meta[name .. ".cols_stride"]))
  close(loss, ref[name .. ".loss"], tol, REF_RTOL, name .. " loss")
  close(ds:index_select(-1, cols), ref[name .. ".ds"], tol, REF_RTOL, name .. " ds")
end

T.test("loss and gradient match PyTorch: K = 1, 7, 169 (centre [K], [1, K], none)", function()
  for _, name in ipairs({"k7", "k1", "k169"}) do
    check_case(name, ref[name .. ".s"], ref[name .. ".t"], ref[name .. ".c"], ref[name .. ".g"], REF_TOL)
  end
  T.eq(ref["k1.loss"], sere.zeros(3))
end)

T.test("K = 8192 (iBOT prototypes), logits rising along K, large logits", function()
  local k = 8192
  check_case("k8192", hashed(3 * k, 1):view(3, k), hashed(3 * k, 2):view(3, k), hashed(k, 3, 0.5), hashed(3, 4),
             REF_TOL)
  local r = ramp()
  check_case("ramp", r, sere.stack({r[2], r[1]}) * 0.5, nil, hashed(2, 5), REF_TOL)
  check_case("big", hashed(1200, 6, 4.0, 1000.0):view(4, 300), hashed(1200, 7, 50.0):view(4, 300), nil,
             hashed(4, 8), BIG_TOL)
end)

T.test("matches the composition: leading dims, strided inputs, centre broadcasts", function()
  local s, t = sere.randn(3, 4, 20), sere.randn(3, 4, 20)
  local g = sere.randn(3, 4)
  for _, c in ipairs({sere.randn(20), sere.randn(1, 1, 20), sere.randn(1), sere.tensor(0.5)}) do
    local a = {run(function(x) return sere.soft_cross_entropy(x, t, c, 0.3, 0.07) end, s, g)}
    local b = {run(function(x) return composed(x, t, c, 0.3, 0.07) end, s, g)}
    close(a[1], b[1], COMP_TOL, COMP_RTOL, "loss, centre " .. table.concat(c:shape(), "x"))
    close(a[2], b[2], COMP_TOL, COMP_RTOL, "ds, centre " .. table.concat(c:shape(), "x"))
  end
  -- transposed student and teacher, a narrowed centre
  local st, tt, cw, g6 = sere.randn(20, 6), sere.randn(20, 6), sere.randn(30), sere.randn(6)
  local a = {run(function(x) return sere.soft_cross_entropy(x:t(), tt:t(), cw:narrow(1, 5, 20), 0.5, 0.2) end, st, g6)}
  local b = {run(function(x) return composed(x:t(), tt:t(), cw:narrow(1, 5, 20), 0.5, 0.2) end, st, g6)}
  close(a[1], b[1], COMP_TOL, COMP_RTOL, "strided loss")
  close(a[2], b[2], COMP_TOL, COMP_RTOL, "strided ds")
  -- one row: a 0-dim loss
  local s9, t9 = sere.randn(9), sere.randn(9)
  local l = sere.soft_cross_entropy(s9, t9)
  T.eq(l:dim(), 0)
  close(l, composed(s9, t9, nil, 1, 1), COMP_TOL, COMP_RTOL, "0-dim")
end)

T.test("defaults: no centre, temperatures 1; the centre may be nil or left out", function()
  local s, t, c = sere.randn(5, 11), sere.randn(5, 11), sere.randn(11)
  close(sere.soft_cross_entropy(s, t), composed(s, t, nil, 1, 1), COMP_TOL, COMP_RTOL, "defaults")
  close(sere.soft_cross_entropy(s, t, 0.2, 0.1), composed(s, t, nil, 0.2, 0.1), COMP_TOL, COMP_RTOL, "no centre")
  close(sere.soft_cross_entropy(s, t, nil, 0.2), composed(s, t, nil, 0.2, 1), COMP_TOL, COMP_RTOL, "nil centre")
  close(sere.soft_cross_entropy(s, t, c, 0.2, 0.1), composed(s, t, c, 0.2, 0.1), COMP_TOL, COMP_RTOL, "centre")
end)

T.test("the gradient uses the centre of the forward pass, even if the buffer changes after", function()
  local s, t, c, g = sere.randn(4, 9), sere.randn(4, 9), sere.randn(9), sere.randn(4)
  local want = {run(function(x) return composed(x, t, c, 0.1, 0.04) end, s, g)}
  local sl = leaf(s)
  local loss = sere.soft_cross_entropy(sl, t, c, 0.1, 0.04)
  c:mul_(0.9):add_(1) -- the method's in-place centre update, before backward
  loss:backward(g)
  close(sl.grad, want[2], COMP_TOL, COMP_RTOL, "ds after centre update")
end)

T.test("bf16 student and teacher are computed in f32 and give bf16 loss and gradient", function()
  local s, t, c, g = sere.randn(6, 40):to("bf16"), sere.randn(6, 40):to("bf16"), sere.randn(40), sere.randn(6)
  local a = {run(function(x) return sere.soft_cross_entropy(x, t, c, 0.5, 0.25) end, s, g:to("bf16"))}
  local b = {run(function(x) return sere.soft_cross_entropy(x, t:float(), c, 0.5, 0.25) end, s:float(), g)}
  T.eq(a[1]:dtype(), "bf16")
  T.eq(a[2]:dtype(), "bf16")
  close(a[1]:float(), b[1], BF16_TOL, BF16_TOL, "bf16 loss")
  close(a[2]:float(), b[2], BF16_TOL, BF16_TOL, "bf16 ds")
end)

T.test("finite-difference gradient of the student", function()
  local opts = {eps = 1e-2, atol = 2e-3, rtol = 2e-2}
  for _, c in ipairs({{{3, 5}, 1, 1}, {{2, 3, 7}, 0.7, 0.4}, {{4, 300}, 0.5, 0.3}, {{6}, 2, 0.5}}) do
    local shape, ts, tt = table.unpack(c)
    local t, ctr = sere.randn(shape), sere.randn(shape[#shape])
    gradcheck(function(x) return sere.soft_cross_entropy(x, t, ctr, ts, tt) end, {leaf(sere.randn(shape))}, opts)
  end
  -- through a transposed view of the student
  local t = sere.randn(4, 6)
  gradcheck(function(x) return sere.soft_cross_entropy(x:t(), t, nil, 0.8, 0.5) end, {leaf(sere.randn(6, 4))}, opts)
end)

T.test("the teacher side must not require grad", function()
  local s, t, c = leaf(sere.randn(3, 4)), leaf(sere.randn(3, 4)), leaf(sere.randn(4))
  T.raises(function() sere.soft_cross_entropy(s, t) end, "teacher requires grad.*detach it")
  T.raises(function() sere.soft_cross_entropy(s, t:detach(), c) end, "center requires grad")
  local l = sere.soft_cross_entropy(s, t:detach(), c:detach())
  l:sum():backward()
  T.eq(t.grad, nil)
  -- under no_grad nothing is recorded, so a teacher that requires grad is fine
  sere.no_grad(function() sere.soft_cross_entropy(s, t, c) end)
  T.eq(sere.soft_cross_entropy(s:detach(), t:detach()).grad_fn, nil)
  T.eq(l.grad_fn, "soft_cross_entropy")
end)

T.test("errors name the op, the shapes and the dtypes", function()
  local s, t = sere.randn(3, 4), sere.randn(3, 4)
  T.raises(function() sere.soft_cross_entropy(s, sere.randn(3, 5)) end,
           "soft_cross_entropy: student %[3, 4%] and teacher %[3, 5%] must have the same shape")
  T.raises(function() sere.soft_cross_entropy(s, sere.randn(4)) end, "same shape")
  T.raises(function() sere.soft_cross_entropy(sere.tensor(1.0), sere.tensor(1.0)) end, "at least 1 dim")
  T.raises(function() sere.soft_cross_entropy(s:long(), t:long()) end, "expects float tensors, got student i64")
  T.raises(function() sere.soft_cross_entropy(s, t, sere.randn(5)) end, "center %[5%] must broadcast to %[4%]")
  T.raises(function() sere.soft_cross_entropy(s, t, sere.randn(2, 4)) end, "center %[2, 4%]")
  T.raises(function() sere.soft_cross_entropy(s, t, sere.randn(4):long()) end, "center i64")
  T.raises(function() sere.soft_cross_entropy(s, t, nil, 0) end, "temperatures must be positive")
  T.raises(function() sere.soft_cross_entropy(s, t, nil, 1, -1) end, "teacher_temp %-1")
  T.raises(function() sere.soft_cross_entropy(s, t, nil, 1, "x") end, "teacher_temp.*expected a number")
  T.raises(function() sere.soft_cross_entropy(s, t, "c") end, "argument #3")
  T.raises(function() sere.soft_cross_entropy(s) end, "argument #2: expected a tensor")
end)

T.finish()
