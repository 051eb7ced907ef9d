-- sere.print — PyTorch-style text form of a tensor, installed as the
-- Tensor metatable's __tostring by sere/init.lua:
--
--   tensor([[ 1.0000, -2.5000],
--           [ 3.0000,  4.0000]], requires_grad=true)
--
-- One formatter per tensor decides between fixed, integer-valued ("1.") and
-- scientific notation from the magnitudes of its finite non-zero values,
-- and pads every element to one width so columns align. Tensors with more
-- than `threshold` elements are summarised: `edgeitems` leading and
-- trailing entries per dim around "...". Only the summarised pieces are
-- read (narrow/select, then totable), so printing a huge tensor is cheap.
local printer = {}

local opts = {precision = 4, threshold = 1000, edgeitems = 3, linewidth = 80, sci_mode = "auto"}
local DEFAULT_DTYPES = {f32 = true, i64 = true, bool = true}
local ELLIPSIS = setmetatable({}, {__name = "ellipsis"}) -- marks the gap in a summarised dim

--- Changes the printing options (any subset of precision, threshold,
--- edgeitems, linewidth, sci_mode = true / false / "auto").
function printer.set_printoptions(o)
  for k, v in pairs(o) do
    if opts[k] == nil then error("set_printoptions: unknown option '" .. tostring(k) .. "'", 2) end
    local ok
    if k == "sci_mode" then ok = v == true or v == false or v == "auto"
    else ok = math.type(v) == "integer" and v >= 0 end
    if not ok then
      error(string.format("set_printoptions: bad value %s for '%s' (%s)", tostring(v), k,
        k == "sci_mode" and 'true, false or "auto"' or "a non-negative integer"), 2)
    end
    opts[k] = v
  end
end

local function host_values(t)
  if t:device() ~= "cpu" then t = t:to("cpu") end
  return t:totable()
end

-- Nested Lua tables of the values to show: whole tensor, or for a
-- summarised one only the edge rows of each dim with ELLIPSIS in between.
local function gather(t, summarise)
  local n = t:dim()
  if n == 0 or not summarise then return host_values(t) end
  local size, e = t:shape()[1], opts.edgeitems
  local long = size > 2 * e
  if n == 1 then
    if not long then return host_values(t) end
    local out = host_values(t:narrow(1, 1, e))
    out[#out + 1] = ELLIPSIS
    for _, v in ipairs(host_values(t:narrow(1, size - e + 1, e))) do out[#out + 1] = v end
    return out
  end
  local out = {}
  local function take(first, last)
    for i = first, last do out[#out + 1] = gather(t:select(1, i), true) end
  end
  if long then
    take(1, e)
    out[#out + 1] = ELLIPSIS
    take(size - e + 1, size)
  else
    take(1, size)
  end
  return out
end

local function each_value(data, fn)
  if type(data) ~= "table" then
    fn(data)
  elseif data ~= ELLIPSIS then
    for _, v in ipairs(data) do each_value(v, fn) end
  end
end

local function nonfinite(v)
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" end
  if v == -math.huge then return "-inf" end
end

-- Returns format(v) -> padded string, chosen from all shown values.
local function make_formatter(data, is_float)
  local p = opts.precision
  local fixed, sci = "%." .. p .. "f", "%." .. p .. "e"
  local fmt
  if not is_float then
    fmt = function(v) return tostring(v) end
  else
    local int_mode, lo, hi = true, math.huge, 0
    each_value(data, function(v)
      if v == v and v ~= 0 and math.abs(v) ~= math.huge then
        local a = math.abs(v)
        if a < lo then lo = a end
        if a > hi then hi = a end
        if v ~= math.floor(v) then int_mode = false end
      end
    end)
    local use_sci = opts.sci_mode
    if use_sci == "auto" then
      use_sci = hi > 0 and (hi / lo > 1000 or hi > 1e8 or (not int_mode and lo < 1e-4))
    end
    if use_sci then
      fmt = function(v) return nonfinite(v) or string.format(sci, v) end
    elseif int_mode then
      fmt = function(v) return nonfinite(v) or string.format("%.0f.", v) end
    else
      fmt = function(v) return nonfinite(v) or string.format(fixed, v) end
    end
  end
  local width = 1
  each_value(data, function(v) width = math.max(width, #fmt(v)) end)
  return function(v) local s = fmt(v); return string.rep(" ", width - #s) .. s end, width
end

-- Renders one nested level; `indent` is the column after its "[".
local function render(data, depth, ndim, indent, format, width)
  if depth == ndim then
    local parts, per_line = {}, math.max(1, (opts.linewidth - indent) // (width + 2))
    local line = {}
    for _, v in ipairs(data) do
      line[#line + 1] = v == ELLIPSIS and " ..." or format(v)
      if #line == per_line then parts[#parts + 1] = table.concat(line, ", "); line = {} end
    end
    if #line > 0 then parts[#parts + 1] = table.concat(line, ", ") end
    return "[" .. table.concat(parts, ",\n" .. string.rep(" ", indent + 1)) .. "]"
  end
  local rows = {}
  for _, row in ipairs(data) do
    rows[#rows + 1] = row == ELLIPSIS and "..." or render(row, depth + 1, ndim, indent + 1, format, width)
  end
  local sep = "," .. string.rep("\n", ndim - depth) .. string.rep(" ", indent + 1)
  return "[" .. table.concat(rows, sep) .. "]"
end

-- Appends ", key=value" suffixes, wrapping to a new line past linewidth.
local function add_suffixes(body, suffixes, indent)
  local out = {body}
  local last = #body - (body:match(".*()\n") or 0) + 1
  for _, s in ipairs(suffixes) do
    if last + #s + 2 > opts.linewidth then
      out[#out + 1] = ",\n" .. string.rep(" ", indent) .. s
      last = indent + #s
    else
      out[#out + 1] = ", " .. s
      last = last + #s + 2
    end
  end
  out[#out + 1] = ")"
  return table.concat(out)
end

--- The text form of tensor t (what tostring(t) and print(t) show).
function printer.tostring(t)
  local prefix = "tensor("
  local indent = #prefix
  local shape, dtype, device = t:shape(), t:dtype(), t:device()
  local suffixes = {}
  local body
  if t:numel() == 0 then
    body = "[]"
    if #shape ~= 1 then suffixes[#suffixes + 1] = "size=[" .. table.concat(shape, ", ") .. "]" end
  else
    local data = gather(t:detach(), t:numel() > opts.threshold)
    local format, width = make_formatter(data, dtype == "f32" or dtype == "bf16")
    if #shape == 0 then body = format(data):match("^%s*(.-)$")
    else body = render(data, 1, #shape, indent, format, width) end
  end
  if device ~= "cpu" then suffixes[#suffixes + 1] = "device=" .. device end
  if not DEFAULT_DTYPES[dtype] then suffixes[#suffixes + 1] = "dtype=" .. dtype end
  if t.grad_fn then suffixes[#suffixes + 1] = "grad_fn=<" .. t.grad_fn .. ">"
  elseif t.requires_grad then suffixes[#suffixes + 1] = "requires_grad=true" end
  return add_suffixes(prefix .. body, suffixes, indent)
end

return printer
