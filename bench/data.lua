-- data.lua — speed of sere's multi-crop loader (sere.data: decode, 2 global
-- + 10 local crops, masks, overlap grids, whole batches) on a folder of
-- images, with 1 and then 2 worker threads, next to the reference
-- torchvision + PIL augmentation on one core (bench/data_torch.py, run by
-- the same command after sere, so the two never share the CPU).
--
--   build/sere bench/data.lua [FOLDER] [epochs] [torch_samples]
-- FOLDER: an ImageFolder tree; default (or ""): tests/data/images linked into a
-- temporary two-class tree. Ratios above 1 mean sere is faster.
local sere = require "sere"
local data = require "sere.data"

local here = arg[0]:match("(.*)/") or "."
local folder = arg[1] ~= "" and arg[1] or nil -- "" also means the default
local epochs = tonumber(arg[2]) or 8
local torch_samples = tonumber(arg[3]) or 48
local B = 4 -- 4 batches per epoch of the 16 test photos, so 2 threads have work to share

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
    sh(string.format("ln -s %s/%s %s/%s/%s", src, name, tmp, i % 2 == 1 and "a" or "b", name))
  end
  p:close()
  folder = tmp
end

local ds = sere.dataset_scan(folder)
local recipe = data.multicrop_recipe()
print(string.format("%s: %d images, %d classes; batch %d, 2x224 + 10x96 crops, masks, grids", folder, ds.count,
                    ds.num_classes, B))

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
for _, threads in ipairs {1, 2} do
  local rate, cpu_rate, n = run(threads)
  ours[threads] = {rate, cpu_rate}
  print(string.format("sere   %d thread%s: %7.1f samples/s  (%7.1f per CPU second, %d samples)", threads,
                      threads > 1 and "s" or " ", rate, cpu_rate, n))
end

local cmd = string.format("/usr/bin/python3 %s/data_torch.py %s %d", here, folder, torch_samples)
local theirs = {}
local p = io.popen(cmd)
for line in p:lines() do
  local key, v = line:match("^([%w_]+)\t([%d%.]+)$")
  if key then theirs[key] = tonumber(v) else print(line) end
end
p:close()
if tmp then sh("rm -r " .. tmp) end
assert(theirs.samples_per_s, "no result from: " .. cmd)

print(string.format("torch  1 core:    %7.1f samples/s  (%7.1f per CPU second, %d samples)", theirs.samples_per_s,
                    theirs.samples_per_cpu_s, torch_samples))
print(string.format("ratio sere 1 thread / torch 1 core: %.2fx wall, %.2fx per CPU second (target >= 5x)",
                    ours[1][1] / theirs.samples_per_s, ours[1][2] / theirs.samples_per_cpu_s))
print(string.format("scaling sere 2 threads / 1 thread: %.2fx", ours[2][1] / ours[1][1]))
print("reproduce: " .. table.concat({arg[-1], arg[0], table.unpack(arg)}, " "))
