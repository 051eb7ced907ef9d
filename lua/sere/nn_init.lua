-- sere.nn_init — parameter initialisers (in place, under no_grad; each
-- returns its tensor with requires_grad set, ready to register).
local sere = require "sere"

local init = {}

local function param(t)
  t.requires_grad = true
  return t
end

--- PyTorch's default for Linear/Conv weights and biases: uniform in
--- +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5) reduces to this).
function init.default_uniform(t, fan_in, generator)
  local bound = 1 / math.sqrt(fan_in)
  sere.no_grad(function() t:uniform_(-bound, bound, {generator = generator}) end)
  return param(t)
end

--- Normal(0, std) truncated to the ABSOLUTE interval [a, b] (default
--- [-2, 2], as the reference's trunc_normal_ does: with std 0.02 this is in
--- effect untruncated). Values outside are redrawn until none remain.
function init.trunc_normal_(t, std, a, b, generator)
  a, b = a or -2, b or 2
  sere.no_grad(function()
    t:normal_(0, std, {generator = generator})
    for _ = 1, 100 do
      local out = t:lt(a):logical_or(t:gt(b))
      local n = out:sum():item()
      if n == 0 then return end
      local redraw = sere.randn({t:numel()}, {generator = generator}):mul(std):view(t:shape())
      t:copy_(sere.where(out, redraw, t))
    end
    error("trunc_normal_: could not draw values inside [" .. a .. ", " .. b .. "]")
  end)
  return param(t)
end

function init.zeros_(t)
  sere.no_grad(function() t:zero_() end)
  return param(t)
end

function init.ones_(t)
  sere.no_grad(function() t:fill_(1) end)
  return param(t)
end

return init
