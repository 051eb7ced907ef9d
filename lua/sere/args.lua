-- sere.args — command-line flags for recipes and tools, read the way the
-- reference's argparse reads them, so its command lines run unchanged:
-- `--name value`, `--name=value`, lists as `--name v1 v2 ...` (every value
-- up to the next flag), booleans as true/false (also on/off, 1/0, as the
-- reference's bool_flag; a bare `--flag` means true). An unknown flag is an error that suggests the
-- closest known one; `--help` prints every flag with its default.
--
--   local args = require "sere.args"
--   local cfg, positional = args.parse(arg, {
--     {"epochs", 100, "number of epochs of training"},
--     {"global_crops_scale", {0.4, 1.0}, "scale range of the global crops"},
--     {"norm_last_layer", true, "weight-normalise the prototypes with g fixed to 1"},
--     {"load_from", nil, "checkpoint to resume from", type = "string"},
--   }, {program = "vit_small.lua", description = "..."})
--
-- A flag's type comes from its default (integer, number, boolean, string,
-- list of numbers) or from `type` = "int" | "float" | "bool" | "string" |
-- "ints" | "floats". A list flag also accepts a single value (the
-- reference's nargs='+'). `choices` restricts a string flag.
local args = {}

--- kind_of(flag) -> "int" | "float" | "bool" | "string" | "ints" | "floats".
local function kind_of(flag)
  if flag.type then return flag.type end
  local d = flag[2]
  if math.type(d) == "integer" then return "int" end
  if type(d) == "number" then return "float" end
  if type(d) == "boolean" then return "bool" end
  if type(d) == "string" then return "string" end
  if type(d) == "table" then
    for _, v in ipairs(d) do
      if math.type(v) ~= "integer" then return "floats" end
    end
    return "ints"
  end
  error("args: flag --" .. tostring(flag[1]) .. " has no default; give it a type", 3)
end
args.kind_of = kind_of

local function show(v)
  if v == nil then return "none" end
  if type(v) == "table" then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = tostring(x) end
    return table.concat(parts, " ")
  end
  return tostring(v)
end

local BOOL = {["true"] = true, on = true, ["1"] = true, yes = true,
              ["false"] = false, off = false, ["0"] = false, no = false}

-- One value of a flag from its text, or nil and the reason.
local function convert(kind, text)
  if kind == "int" or kind == "ints" then
    local v = math.tointeger(tonumber(text))
    if v == nil then return nil, "wants an integer" end
    return v
  elseif kind == "float" or kind == "floats" then
    local v = tonumber(text)
    if v == nil then return nil, "wants a number" end
    return v + 0.0
  elseif kind == "bool" then
    local v = BOOL[text:lower()]
    if v == nil then return nil, "wants true or false" end
    return v
  end
  return text
end

-- Levenshtein distance, for suggestions.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = {[0] = i}
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function suggestion(name, spec)
  local best, best_d
  for _, flag in ipairs(spec) do
    local d = distance(name, flag[1])
    if flag[1]:find(name, 1, true) or name:find(flag[1], 1, true) then d = math.min(d, 2) end
    if not best_d or d < best_d then best, best_d = flag[1], d end
  end
  if best and best_d <= math.max(2, #name // 3) then return best end
end

local function is_flag(s) return s:sub(1, 2) == "--" or (s:sub(1, 1) == "-" and not tonumber(s)) end

--- usage(spec, opts) -> the --help text: opts.program, opts.description,
--- opts.positional (a usage string for the positional arguments), then
--- every flag with its type, default and help.
function args.usage(spec, opts)
  opts = opts or {}
  local lines = {string.format("usage: sere %s%s [--flag value ...]", opts.program or "script.lua",
    opts.positional and (" " .. opts.positional) or "")}
  if opts.description then lines[#lines + 1] = "\n" .. opts.description end
  lines[#lines + 1] = "\nflags (default in brackets):"
  local width = 0
  for _, flag in ipairs(spec) do width = math.max(width, #flag[1]) end
  for _, flag in ipairs(spec) do
    local kind = kind_of(flag)
    local kinds = {int = "N", float = "X", bool = "true|false", string = "S", ints = "N ...", floats = "X ..."}
    local help = flag[3] or ""
    if flag.choices then help = help .. " (" .. table.concat(flag.choices, ", ") .. ")" end
    lines[#lines + 1] = string.format("  --%-" .. width .. "s  %-10s %s [%s]", flag[1], kinds[kind], help,
      show(flag[2]))
  end
  lines[#lines + 1] = string.format("  --%-" .. width .. "s  %-10s %s", "help", "", "print this and exit")
  return table.concat(lines, "\n")
end

--- try_parse(argv, spec[, opts]) -> cfg, positional | nil, message, or
--- "help" as the second value when --help / -h was given. cfg holds every
--- flag (defaults included; lists are fresh copies); positional the other
--- arguments, allowed only when opts.positional is set.
function args.try_parse(argv, spec, opts)
  opts = opts or {}
  local by_name, cfg, positional = {}, {}, {}
  for _, flag in ipairs(spec) do
    local name = flag[1]
    assert(not by_name[name], "args: flag --" .. name .. " declared twice")
    by_name[name] = flag
    local d = flag[2]
    if type(d) == "table" then d = table.move(d, 1, #d, 1, {}) end
    cfg[name] = d
  end
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--help" or a == "-h" then return nil, "help" end
    if not is_flag(a) then
      if not opts.positional then return nil, string.format("unexpected argument '%s' (flags start with --)", a) end
      positional[#positional + 1] = a
      i = i + 1
    else
      local name, inline = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:match("^%-%-(.+)$")
      local flag = name and by_name[name]
      if not flag then
        local near = suggestion(name or a:gsub("^%-+", ""), spec)
        return nil, string.format("unknown flag '%s'%s (--help lists them)", a,
          near and string.format("; did you mean --%s?", near) or "")
      end
      local kind = kind_of(flag)
      local texts = {}
      if inline then
        texts[1] = inline
        i = i + 1
      else
        i = i + 1
        local many = kind == "ints" or kind == "floats"
        while i <= #argv and not is_flag(argv[i]) and (many or #texts == 0) do
          texts[#texts + 1] = argv[i]
          i = i + 1
        end
      end
      if #texts == 0 and kind == "bool" then texts[1] = "true" end -- a bare boolean flag sets it
      if #texts == 0 then return nil, string.format("--%s needs a value", name) end
      local values = {}
      for k, text in ipairs(texts) do
        local v, why = convert(kind, text)
        if v == nil then return nil, string.format("--%s %s, got '%s'", name, why, text) end
        values[k] = v
      end
      if flag.choices then
        local ok = false
        for _, c in ipairs(flag.choices) do ok = ok or c == values[1] end
        if not ok then
          return nil, string.format("--%s must be one of %s, got '%s'", name, table.concat(flag.choices, ", "),
            values[1])
        end
      end
      if flag.count and #values ~= flag.count then
        return nil, string.format("--%s takes %d values, got %d", name, flag.count, #values)
      end
      cfg[name] = (kind == "ints" or kind == "floats") and values or values[1]
    end
  end
  return cfg, positional
end

-- "knn" for "tools/knn.lua": the name errors are reported under.
local function short_name(opts)
  return ((opts and opts.program or "sere"):match("([^/]+)$"):gsub("%.lua$", ""))
end

--- fail(opts, message): prints "<program>: error: <message>" (the
--- program's file name without .lua) on stderr and exits 1 — for errors
--- a script finds after parsing (a missing file, a bad combination).
function args.fail(opts, message)
  io.stderr:write(string.format("%s: error: %s\n", short_name(opts), tostring(message)))
  os.exit(1)
end

--- parse(argv, spec[, opts]) -> cfg, positional: try_parse, except that
--- --help prints the usage and exits 0, and a bad command line prints
--- "<program>: error: ..." and exits 2 (argparse's conventions).
function args.parse(argv, spec, opts)
  opts = opts or {}
  local cfg, positional = args.try_parse(argv, spec, opts)
  if cfg then return cfg, positional end
  if positional == "help" then
    print(args.usage(spec, opts))
    os.exit(0)
  end
  io.stderr:write(string.format("%s: error: %s\n", short_name(opts), positional))
  os.exit(2)
end

return args
