-- data.lua — speed of sere's multi-crop loader (sere.data: decode, 2 global
-- + 10 local crops, masks, overlap grids, whole batches) on a folder of
-- images, for each of a list of worker-thread counts, next to the reference
-- torchvision + PIL augmentation on one core (bench/data_torch.py, run by
-- the same command after sere, so the two never share the CPU).
--
--   build/sere bench/data.lua [FOLDER] [epochs] [torch_samples] [threads] [dct]
-- FOLDER: an ImageFolder tree; default (or ""): the photos of
-- tests/data/images, each linked 4 times into a temporary two-class tree (64
-- images, 16 batches of 4 per epoch, so that threads have work to share).
-- epochs (8) are timed after one of warm-up; torch_samples (64, one pass
-- over the default tree: every photo 4 times, as in an epoch of sere; 0: skip
-- torch); threads: a comma-separated list of thread counts (1,2), the
-- thread-scaling mode; dct: on (default) or off, the recipe's dct_scaling.
-- Prints samples per second of wall clock and per CPU second (all threads
-- of the process), each count's wall-clock speed-up over the first, and
-- the ratio sere / torch per CPU second (above 1: sere is faster).
local sere = require "sere"
local data = require "sere.data"

local here = arg[0]:match("(.*)/") or "."
local folder = arg[1] ~= "" and arg[1] or nil -- "" also means the default
local epochs = tonumber(arg[2]) or 8
local torch_samples = tonumber(arg[3]) or 64
local thread_counts = {}
for n in (arg[4] or "1,2"):gmatch("%d+") do thread_counts[#thread_counts + 1] = tonumber(n) end
assert(#thread_counts > 0, "threads: expected a list like 1,2,4")
local dct = arg[5] or "on"
assert(dct == "on" or dct == "off", "dct: expected on or off, got " .. dct)
local B = 4

local function sh(cmd) assert(os.execute(cmd), cmd) end

-- The default: the test photos as an ImageFolder (alternating between two
-- class folders), as symbolic links to absolute paths.
local tmp
if not folder then
  tmp = os.tmpname()
  os.remove(tmp)
  local src = io.popen("cd " .. here .. "/../tests/data/images && pwd"):read("l")
  sh(string.format("mkdir -p %s/a %s/b", tmp, tmp))
  local p = io.popen("ls " .. src)
  local i = 0
  for name in p:lines() do
    i = i + 1
    for copy = 1, 4 do
      sh(string.format("ln -s %s/%s %s/%s/%d_%s", src, name, tmp, i % 2 == 1 and "a" or "b", copy, name))
    end
  end
  p:close()
  folder = tmp
end

local ds = sere.dataset_scan(folder)
local recipe = data.multicrop_recipe {dct_scaling = dct == "on"}
print(string.format("%s: %d images, %d classes; batch %d, 2x224 + 10x96 crops, masks, grids; DCT scaling %s",
                    folder, ds.count, ds.num_classes, B, dct))

-- Samples per second (wall clock) and per CPU second (all threads) over
-- `epochs` epochs, after one epoch of warm-up.
local function run(threads)
  local loader = data.Loader {dataset = ds, recipe = recipe, batch_size = B, threads = threads, seed = 0}
  for _ in loader:epoch(0) do end
  local n, t0, c0 = 0, sere.clock(), os.clock()
  for e = 1, epochs do
    for batch in loader:epoch(e) do n = n + batch.labels:shape()[1] end
  end
  local wall, cpu = sere.clock() - t0, os.clock() - c0
  loader:close()
  return n / wall, n / cpu, n
end

local ours = {}
for i, threads in ipairs(thread_counts) do
  local rate, cpu_rate, n = run(threads)
  ours[i] = {rate, cpu_rate}
  print(string.format("sere  %2d thread%s: %7.1f samples/s  (%7.1f per CPU second, %d samples)  speed-up %.2fx", threads,
                      threads > 1 and "s" or " ", rate, cpu_rate, n, rate / ours[1][1]))
end

if torch_samples > 0 then
  local cmd = string.format("/usr/bin/python3 %s/data_torch.py %s %d", here, folder, torch_samples)
  local theirs = {}
  local p = io.popen(cmd)
  for line in p:lines() do
    local key, v = line:match("^([%w_]+)\t([%d%.]+)$")
    if key then theirs[key] = tonumber(v) else print(line) end
  end
  p:close()
  assert(theirs.samples_per_s, "no result from: " .. cmd)
  print(string.format("torch  1 core:    %7.1f samples/s  (%7.1f per CPU second, %d samples)", theirs.samples_per_s,
                      theirs.samples_per_cpu_s, torch_samples))
  print(string.format("ratio sere %d thread%s / torch 1 core: %.2fx wall, %.2fx per CPU second (target >= 5x)",
                      thread_counts[1], thread_counts[1] > 1 and "s" or "", ours[1][1] / theirs.samples_per_s,
                      ours[1][2] / theirs.samples_per_cpu_s))
end
if tmp then sh("rm -r " .. tmp) end
local words = {arg[-1], arg[0]}
for _, a in ipairs(arg) do words[#words + 1] = a == "" and '""' or a end
print("reproduce: " .. table.concat(words, " "))
