-- compare.lua — what bench/ops.lua and bench/model.lua share: the median
-- time of a function, running the PyTorch twin script in a subprocess
-- (it prints `name<TAB>seconds` lines, see bench/timing.py), and the
-- side-by-side table with the ratio torch / sere (above 1: sere is faster).
--
--   local compare = dofile((arg[0]:match("(.*)/") or ".") .. "/compare.lua")
local sere = require "sere"

local compare = {}

--- median_time(fn, repeats) -> seconds: one warm-up call, then the median
--- of `repeats` timed calls.
function compare.median_time(fn, repeats)
  fn()
  local times = {}
  for i = 1, repeats do
    local t0 = sere.clock()
    fn()
    times[i] = sere.clock() - t0
  end
  table.sort(times)
  return times[(#times + 1) // 2]
end

--- torch_times(script, ...) -> {name = seconds}: runs
--- `/usr/bin/python3 bench/<script> ...` (Debian's python3-torch) and reads
--- its `name<TAB>seconds` lines.
function compare.torch_times(script, ...)
  local words = {"/usr/bin/python3", (arg[0]:match("(.*)/") or ".") .. "/" .. script}
  for _, a in ipairs({...}) do words[#words + 1] = tostring(a) end
  local times = {}
  local p = io.popen(table.concat(words, " "))
  for line in p:lines() do
    local name, secs = line:match("^(.-)\t([%d%.e%-]+)$")
    if name then times[name] = tonumber(secs) end
  end
  p:close()
  return times
end

--- print_table(o): o.title, o.column (first column's heading), o.names
--- (row order), o.ours and o.theirs ({name = seconds}; rows missing from
--- ours are skipped, from theirs shown as n/a), o.reproduce (the command).
function compare.print_table(o)
  print(o.title)
  print(string.format("%-36s %10s %10s %10s", o.column, "sere ms", "torch ms", "torch/sere"))
  for _, name in ipairs(o.names) do
    local a, b = o.ours[name], o.theirs[name]
    if a then
      print(string.format("%-36s %10.2f %10s %10s", name, a * 1e3, b and string.format("%.2f", b * 1e3) or "n/a",
        b and string.format("%.2f", b / a) or "n/a"))
    end
  end
  print("reproduce: " .. o.reproduce)
end

return compare
