-- sere.json — the small JSON subset sere writes and reads: the training
-- log (log.txt, one record per line), the flags saved in a checkpoint's
-- "args" metadata, and reading them back (sere.eval, tools/).
--
--   local json = require "sere.json"
--   local text = json.encode({lr = 5e-4, pred_ratio = {0, 0.3}})   -- keys sorted
--   local cfg = json.decode(text, "args")                            -- "args" names the text in errors
local json = {}

--- encode(v) -> text: numbers (integers as such, floats with 8
--- significant digits, NaN/inf as null), strings (control characters,
--- quotes and backslashes as \u escapes), booleans, arrays (tables with
--- #v > 0, and empty tables) and objects (string keys, sorted; functions
--- and userdata left out); anything else is null.
function json.encode(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return math.type(v) == "integer" and tostring(v) or string.format("%.8g", v)
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if #v > 0 or next(v) == nil then
      local items = {}
      for i, x in ipairs(v) do items[i] = json.encode(x) end
      return "[" .. table.concat(items, ", ") .. "]"
    end
    local keys = {}
    for k, x in pairs(v) do
      if type(k) == "string" and type(x) ~= "function" and type(x) ~= "userdata" then keys[#keys + 1] = k end
    end
    table.sort(keys)
    local items = {}
    for i, k in ipairs(keys) do items[i] = json.encode(k) .. ": " .. json.encode(v[k]) end
    return "{" .. table.concat(items, ", ") .. "}"
  end
  return "null"
end

--- decode(text, what) -> value: objects, arrays, strings, numbers, true,
--- false and null (-> nil); `what` names the text in errors.
function json.decode(text, what)
  local pos = 1
  local function fail(msg) error(string.format("%s: invalid JSON at byte %d: %s", what, pos, msg), 0) end
  local function skip() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local ESCAPES = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}
  local LITERALS = {{"true", true}, {"false", false}, {"null", nil}}
  local value
  local function string_value()
    local parts = {}
    pos = pos + 1
    while true do
      local stop = text:find('["\\]', pos)
      if not stop then fail("unterminated string") end
      parts[#parts + 1] = text:sub(pos, stop - 1)
      pos = stop + 1
      if text:sub(stop, stop) == '"' then return table.concat(parts) end
      local c = text:sub(pos, pos)
      if c == "u" then
        local hex = text:match("^%x%x%x%x", pos + 1)
        if not hex then fail("bad \\u escape") end
        parts[#parts + 1] = utf8.char(tonumber(hex, 16))
        pos = pos + 5
      elseif ESCAPES[c] then
        parts[#parts + 1] = ESCAPES[c]
        pos = pos + 1
      else
        fail("bad escape '\\" .. c .. "'")
      end
    end
  end
  local function container(close, item)
    local out = {}
    pos = pos + 1
    skip()
    if text:sub(pos, pos) == close then pos = pos + 1; return out end
    while true do
      item(out)
      skip()
      local c = text:sub(pos, pos)
      pos = pos + 1
      if c == close then return out end
      if c ~= "," then fail("expected ',' or '" .. close .. "'") end
    end
  end
  function value()
    skip()
    local c = text:sub(pos, pos)
    if c == "{" then
      return container("}", function(out)
        skip()
        if text:sub(pos, pos) ~= '"' then fail("expected a key") end
        local k = string_value()
        skip()
        if text:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        out[k] = value()
      end)
    elseif c == "[" then
      return container("]", function(out) out[#out + 1] = value() end)
    elseif c == '"' then
      return string_value()
    end
    for _, literal in ipairs(LITERALS) do
      if text:sub(pos, pos + #literal[1] - 1) == literal[1] then
        pos = pos + #literal[1]
        return literal[2]
      end
    end
    local num = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    if not num or num == "" or not tonumber(num) then fail("unexpected '" .. c .. "'") end
    pos = pos + #num
    return math.tointeger(tonumber(num)) or tonumber(num)
  end
  local v = value()
  skip()
  if pos <= #text then fail("trailing characters") end
  return v
end

return json
