-- test_loader.lua — sere.data / sere.loader_*: batch shapes and layouts
-- (each slot checked against the crop, mask and grid functions of
-- sere.augment_* called directly on the same Philox streams), DCT-scaled
-- decoding (same boxes, crops remade exactly from the scaled image and
-- close to the full decode's), byte-identical batches for 1 and 4 threads
-- and across runs, mid-epoch starts (the rest of the epoch byte for byte,
-- the skipped samples never decoded), the distributed sampler's sharding
-- and padding, drop_last, epochs, abandoned epochs, bad files (skipped with
-- one warning each) and the errors. Small crops keep it fast.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local data = require "sere.data"

local base = os.tmpname()
os.remove(base)
local function sh(cmd) assert(os.execute(cmd), cmd) end
local IMAGES = "tests/data/images/"
-- 5 images in 2 classes
local root = base .. "_tree"
sh(string.format("mkdir -p %s/cats %s/misc", root, root))
for _, f in ipairs {"cats/chelsea_cat_451x300_q90.jpg", "cats/coins_384x303_gray_q90.jpg",
                    "misc/microaneurysms_102x102_gray.png", "misc/rocket_tall_crop_184x427_q90.jpg",
                    "misc/raccoon_face_512x384_palette.png"} do
  sh(string.format("cp %s%s %s/%s", IMAGES, f:match("[^/]+$"), root, f))
end
local ds = sere.dataset_scan(root)

local G, L, B = 2, 3, 2
local recipe = data.multicrop_recipe {global_size = 64, local_size = 32, local_crops_number = L, overlap_size = {5, 7}}
-- the same without DCT scaling: every crop is Pillow's, byte for byte
local exact = data.multicrop_recipe {global_size = 64, local_size = 32, local_crops_number = L, overlap_size = {5, 7},
                                     dct_scaling = false}

local function shape(t) return table.concat(t:shape(), "x") end
local function maxdiff(a, b)
  T.eq(shape(a), shape(b), "shape")
  return (a:float() - b:float()):abs():max():item()
end
local FIELDS = {"global_crops", "local_crops", "masks", "grids_gg_rows", "grids_gg_cols", "grids_lg_local",
                "grids_lg_global", "mappings", "labels"}
local function same_batches(x, y, what)
  T.eq(#x, #y, what .. ": batch count")
  for i = 1, #x do
    for _, f in ipairs(FIELDS) do T.eq(maxdiff(x[i][f], y[i][f]), 0, what .. ": batch " .. i .. " " .. f) end
  end
end
local function collect(opts, epoch, start_batch)
  local o = {dataset = ds, recipe = recipe, batch_size = B, seed = 7}
  for k, v in pairs(opts or {}) do o[k] = v end
  local ld = data.Loader(o)
  local out = {}
  for batch in ld:epoch(epoch or 0, {start_batch = start_batch}) do out[#out + 1] = batch end
  ld:close()
  return out, ld
end

T.test("multicrop_recipe: the method's crops, overridable", function()
  local r = data.multicrop_recipe()
  T.eq(#r.global, 2, "globals")
  T.eq(#r["local"], 10, "locals")
  T.eq(r.global[1].size, 224, "global size")
  T.eq(r["local"][1].size, 96, "local size")
  T.eq(r.global[1].p_blur, 1.0, "crop 1 blur")
  T.eq(r.global[2].p_blur, 0.1, "crop 2 blur")
  T.eq(r.global[2].p_solarize, 0.2, "crop 2 solarise")
  T.eq(r.global[1].p_solarize, 0, "crop 1 solarise")
  T.eq(r["local"][3].p_blur, 0.5, "local blur")
  T.eq(r.global[1].scale[1], 0.4, "global scale")
  T.eq(r["local"][1].scale[2], 0.4, "local scale")
  T.eq(table.concat(r.pred_ratio, ","), "0,0.3", "pred_ratio")
  T.eq(table.concat(r.overlap_size, ","), "13,13", "overlap")
  local v = data.multicrop_recipe {global_crops_scale = {0.32, 1}, local_crops_number = 6}
  T.eq(v.global[2].scale[1], 0.32, "ViT-B scale")
  T.eq(#v["local"], 6, "local count")
end)

T.test("batch shapes and dtypes", function()
  local batches = collect({threads = 2})
  T.eq(#batches, 2, "5 samples, B = 2, drop_last")
  local b = batches[1]
  T.eq(shape(b.global_crops), "4x3x64x64", "global_crops [G*B, 3, 64, 64]")
  T.eq(shape(b.local_crops), "6x3x32x32", "local_crops [L*B, 3, 32, 32]")
  T.eq(shape(b.masks), "4x4x4", "masks [G*B, 64/16, 64/16]")
  T.eq(b.masks:dtype(), "bool", "masks dtype")
  T.eq(shape(b.grids_gg_rows), "4x5x5x2", "grids_gg_rows [G*B, S0, S0, 2]")
  T.eq(shape(b.grids_gg_cols), "4x7x7x2", "grids_gg_cols [G*B, S1, S1, 2]")
  T.eq(shape(b.grids_lg_local), "6x2x6x6x2", "grids_lg_local [G*L, B, 6, 6, 2]")
  T.eq(shape(b.grids_lg_global), "6x2x6x6x2", "grids_lg_global")
  T.eq(shape(b.mappings), "5x2x5", "mappings [G+L, B, 5]")
  T.eq(b.labels:dtype(), "i64", "labels dtype")
end)

-- Every slot of a batch against sere.augment_* on the same streams.
T.test("layout: each slot equals the crops, masks and grids made directly", function()
  local ld = data.Loader {dataset = ds, recipe = exact, batch_size = B, seed = 11, threads = 2}
  local idx = ld:indices(3)
  local k = 0
  for batch in ld:epoch(3) do
    for b = 1, B do
      k = k + 1
      local sample = idx[k]
      local img = sere.image_load(ds:path(sample))
      local maps = {}
      for c = 1, G + L do
        local rc = c <= G and recipe.global[c] or recipe["local"][c - G]
        local crop, p = sere.augment_crop(img, rc, {seed = 11, epoch = 3, sample = sample - 1, crop = c - 1})
        local want = sere.augment_normalize(crop)
        local got = c <= G and batch.global_crops[(c - 1) * B + b] or batch.local_crops[(c - G - 1) * B + b]
        T.eq(maxdiff(got, want), 0, "crop " .. c .. " of sample " .. sample)
        maps[c] = {p.box[1], p.box[2], p.box[3], p.box[4], p.flip and 1 or 0}
        local got_map = batch.mappings[c][b]:totable()
        for i = 1, 5 do T.eq(got_map[i], maps[c][i], "mapping " .. c .. " entry " .. i) end
      end
      for g = 1, G do
        local m = sere.augment_block_mask(4, 4, {mean = recipe.pred_ratio, var = recipe.pred_ratio_var},
                                          {seed = 11, epoch = 3, sample = sample - 1, crop = G + L + g - 1})
        T.eq(maxdiff(batch.masks[(g - 1) * B + b], m), 0, "mask " .. g)
      end
      local function m(c) return sere.tensor({maps[c]}) end
      for i, S in ipairs {5, 7} do
        local q, kk = sere.augment_overlap_grids(m(1), m(2), S)
        local t = i == 1 and batch.grids_gg_rows or batch.grids_gg_cols
        T.eq(maxdiff(t[b], q[1]), 0, "gg crop 1 frame, S " .. S)
        T.eq(maxdiff(t[B + b], kk[1]), 0, "gg crop 2 frame, S " .. S)
      end
      for g = 1, G do
        for l = 1, L do
          local gl, gg = sere.augment_overlap_grids(m(G + l), m(g), 6)
          T.eq(maxdiff(batch.grids_lg_local[(g - 1) * L + l][b], gl[1]), 0, "lg local frame")
          T.eq(maxdiff(batch.grids_lg_global[(g - 1) * L + l][b], gg[1]), 0, "lg global frame")
        end
      end
      T.eq(batch.labels:totable()[b], ds:label(sample), "label (1-based)")
    end
  end
  T.eq(k, 4, "samples seen")
  -- the single-sample entry point makes the same sample
  local one = data.sample(ds, idx[1], 3, 11, exact)
  local crop = sere.augment_crop(sere.image_load(ds:path(idx[1])), recipe.global[2],
                                 {seed = 11, epoch = 3, sample = idx[1] - 1, crop = 1})
  T.eq(maxdiff(one.global_crops[2], sere.augment_normalize(crop)), 0, "data.sample")
end)

-- The scale the loader must pick: the largest d in 8, 4, 2, 1 with every
-- crop box at least d times its output size.
local function dct_denom(params, r)
  for _, d in ipairs {8, 4, 2} do
    local fits = true
    for c, p in ipairs(params) do
      local size = c <= G and r.global[c].size or r["local"][c - G].size
      if p.box[3] < d * size or p.box[4] < d * size then fits = false end
    end
    if fits then return d end
  end
  return 1
end

T.test("DCT scaling: the same boxes; crops remade exactly from the scaled image, close to the full decode", function()
  local seed, epoch, scaled, worst = 5, 2, 0, 0
  for i = 1, #ds do
    local path = ds:path(i)
    local full = sere.image_load(path)
    local H, W = full:shape()[1], full:shape()[2]
    local params = {}
    for c = 1, G + L do
      local rc = c <= G and recipe.global[c] or recipe["local"][c - G]
      params[c] = sere.augment_sample_params(W, H, rc, {seed = seed, epoch = epoch, sample = i - 1, crop = c - 1})
    end
    local d = path:match("%.jpg$") and dct_denom(params, recipe) or 1
    local got = data.sample(ds, i, epoch, seed, recipe)
    local want = data.sample(ds, i, epoch, seed, exact)
    for _, f in ipairs {"mappings", "masks", "grids_gg_rows", "grids_gg_cols", "grids_lg_local", "labels"} do
      T.eq(maxdiff(got[f], want[f]), 0, path .. ": " .. f .. " as with a full-size decode")
    end
    if d == 1 then
      T.eq(maxdiff(got.global_crops, want.global_crops), 0, path .. ": no scale fits, the full decode")
    else
      scaled = scaled + 1
      local small, used = sere.image_load(path, {denom = d})
      T.eq(used, d, "decoded at 1/" .. d)
      for c = 1, G + L do
        local p, size = params[c], c <= G and recipe.global[c].size or recipe["local"][c - G].size
        local x = sere.augment_resize(small, p.box, size, size, d)
        if p.flip then x = sere.augment_hflip(x) end
        if p.jitter then for _, op in ipairs(p.order) do x = sere.augment_color(x, op, p[op]) end end
        if p.gray then x = sere.augment_grayscale(x) end
        if p.blur then x = sere.augment_blur(x, p.sigma) end
        if p.solarize then x = sere.augment_solarize(x) end
        local crop = c <= G and got.global_crops[c] or got.local_crops[c - G]
        local ref = c <= G and want.global_crops[c] or want.local_crops[c - G]
        T.eq(maxdiff(crop, sere.augment_normalize(x)), 0, path .. ": crop " .. c .. " from the 1/" .. d .. " image")
        -- against the full decode: mean difference in grey levels (std ~0.225)
        local mad = (crop - ref):abs():mean():item() * 0.225 * 255
        worst = math.max(worst, mad)
      end
    end
  end
  T.eq(scaled >= 2, true, "some samples were decoded at a reduced scale (" .. scaled .. ")")
  -- JPEG's reduced IDCT plus the bicubic filter: a few grey levels on average
  T.eq(worst < 4, true, "crops close to the full decode's: worst mean difference " .. worst .. " grey levels")
end)

T.test("byte-identical batches for 1 and 4 threads and across runs", function()
  local one = collect({threads = 1, prefetch = 1})
  local four = collect({threads = 4, prefetch = 3})
  local again = collect({threads = 4})
  same_batches(one, four, "1 vs 4 threads")
  same_batches(four, again, "two runs")
  local other = collect({threads = 2, seed = 8})
  T.eq(maxdiff(other[1].global_crops, one[1].global_crops) > 0, true, "another seed differs")
end)

T.test("mid-epoch start: the rest of the epoch byte for byte, skipped samples never decoded", function()
  -- 5 samples in batches of 1 without drop_last: 5 batches
  local whole = collect({batch_size = 1, drop_last = false, threads = 2}, 4)
  T.eq(#whole, 5, "batches per epoch")
  for _, threads in ipairs {1, 3} do
    for k = 1, 6 do
      local rest = collect({batch_size = 1, drop_last = false, threads = threads, prefetch = 2}, 4, k)
      local want = {}
      for i = k, #whole do want[#want + 1] = whole[i] end
      same_batches(rest, want, threads .. " threads, start_batch " .. k)
    end
  end
  -- corrupt the files of batches 1 and 2 of a copy: starting at batch 3
  -- reads none of them (no bad file) and still gives batches 3..5
  local copy = base .. "_resume"
  sh(string.format("cp -r %s %s", root, copy))
  local cds = sere.dataset_scan(copy)
  local ld = data.Loader {dataset = cds, recipe = recipe, batch_size = 1, drop_last = false, seed = 7, threads = 2}
  local idx = ld:indices(4)
  for i = 1, 2 do sh(string.format(": > '%s'", cds:path(idx[i]))) end
  local rest = {}
  for batch in ld:epoch(4, {start_batch = 3}) do rest[#rest + 1] = batch end
  same_batches(rest, {whole[3], whole[4], whole[5]}, "resumed over corrupt skipped files")
  T.eq(ld:bad_count(), 0, "the skipped files were not decoded")
  T.raises(function() ld:epoch(4, {start_batch = 0}) end, "start_batch 0 is not in %[1, 6%]")
  T.raises(function() ld:epoch(4, {start_batch = 7}) end, "start_batch 7 is not in %[1, 6%]")
  ld:close()
  sh("rm -rf " .. copy)
  -- with drop_last and B = 2: 2 batches; start at the second
  local two = collect({threads = 2}, 1)
  same_batches(collect({threads = 2}, 1, 2), {two[2]}, "drop_last, start_batch 2")
end)

T.test("epochs: different permutations and crops, same epoch same data", function()
  local e0, e1 = collect({threads = 2}, 0), collect({threads = 2}, 1)
  T.eq(maxdiff(e0[1].global_crops, e1[1].global_crops) > 0, true, "epoch 0 vs 1 crops")
  local ld = data.Loader {dataset = ds, recipe = recipe, batch_size = B, seed = 7, threads = 1}
  local function key(t) return table.concat(t, ",") end
  local seen = {}
  for e = 0, 5 do seen[key(ld:indices(e))] = true end
  local distinct = 0
  for _ in pairs(seen) do distinct = distinct + 1 end
  T.eq(distinct > 1, true, "permutations change with the epoch")
  T.eq(key(ld:indices(4)), key(ld:indices(4)), "same epoch, same permutation")
  local sorted = ld:indices(2)
  table.sort(sorted)
  T.eq(key(sorted), "1,2,3,4,5", "a permutation of 1..n")
  local plain = data.Loader {dataset = ds, recipe = recipe, batch_size = B, shuffle = false, threads = 1}
  T.eq(key(plain:indices(9)), "1,2,3,4,5", "shuffle = false keeps the order")
end)

T.test("sharding like a distributed sampler (padding by repetition)", function()
  local function idx(rank, world, e)
    local ld = data.Loader {dataset = ds, recipe = recipe, batch_size = 1, seed = 7, rank = rank, world_size = world,
                            threads = 1}
    return ld:indices(e)
  end
  local perm = idx(0, 1, 2)
  local r0, r1 = idx(0, 2, 2), idx(1, 2, 2)
  T.eq(#r0, 3, "ceil(5 / 2) per rank")
  T.eq(#r1, 3, "ceil(5 / 2) per rank")
  -- padded = perm .. perm[1]; rank r takes padded[r + 1], padded[r + 3], ...
  local padded = {perm[1], perm[2], perm[3], perm[4], perm[5], perm[1]}
  for i = 1, 3 do
    T.eq(r0[i], padded[2 * i - 1], "rank 0 entry " .. i)
    T.eq(r1[i], padded[2 * i], "rank 1 entry " .. i)
  end
  local cover = {}
  for _, v in ipairs(r0) do cover[v] = (cover[v] or 0) + 1 end
  for _, v in ipairs(r1) do cover[v] = (cover[v] or 0) + 1 end
  for s = 1, 5 do T.eq(cover[s], s == perm[1] and 2 or 1, "sample " .. s .. " coverage") end
  -- 3 ranks of 5: 2 each, padding repeats perm[1]
  local r2 = idx(2, 3, 2)
  T.eq(#r2, 2, "ceil(5 / 3)")
  T.eq(r2[2], perm[1], "padding wraps around")
  -- rank 1's batches are made from its own indices
  local ld = data.Loader {dataset = ds, recipe = recipe, batch_size = 3, seed = 7, rank = 1, world_size = 2, threads = 2}
  local n = 0
  for batch in ld:epoch(2) do
    n = n + 1
    for b = 1, 3 do T.eq(batch.labels:totable()[b], ds:label(r1[b]), "rank 1 label " .. b) end
  end
  T.eq(n, 1, "rank 1: one batch of 3")
end)

T.test("drop_last", function()
  local kept = collect({threads = 2, drop_last = false})
  T.eq(#kept, 3, "3 batches without drop_last")
  T.eq(kept[3].global_crops:shape()[1], G * 1, "last batch holds 1 sample")
  T.eq(shape(kept[3].grids_lg_local), "6x1x6x6x2", "last batch grids")
  local dropped = collect({threads = 2})
  same_batches({dropped[1], dropped[2]}, {kept[1], kept[2]}, "same full batches")
  local big = data.Loader {dataset = ds, recipe = recipe, batch_size = 8, threads = 1}
  T.eq(big:num_batches(), 0, "B > n with drop_last: no batch")
  local n = 0
  for _ in big:epoch(0) do n = n + 1 end
  T.eq(n, 0, "empty epoch")
end)

T.test("abandoned epochs and closing", function()
  local ld = data.Loader {dataset = ds, recipe = recipe, batch_size = 1, threads = 4, prefetch = 2, seed = 3}
  for _ in ld:epoch(0) do break end -- workers are still running
  local first
  for batch in ld:epoch(1) do
    first = first or batch
  end
  local again = collect({batch_size = 1, seed = 3, threads = 1}, 1)
  T.eq(maxdiff(first.global_crops, again[1].global_crops), 0, "a restarted epoch is unaffected")
  for _ in ld:epoch(2) do break end
  ld:close()
  T.raises(function() ld:num_batches() end, "closed")
  local dropped = data.Loader {dataset = ds, recipe = recipe, batch_size = 1, threads = 2}
  for _ in dropped:epoch(0) do break end
  dropped = nil
  collectgarbage()
  collectgarbage()
end)

-- Runs a script in a child process; returns its stderr and success.
local function run_child(script)
  local path, err = base .. "_child.lua", base .. "_child.err"
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local ok = os.execute(string.format("%s %s > /dev/null 2> %s", arg[-1], path, err))
  local e = assert(io.open(err)):read("a")
  return e, ok
end

T.test("bad files: skipped with one warning each, the run goes on", function()
  local bad = base .. "_bad"
  sh(string.format("cp -r %s %s", root, bad))
  sh(string.format("head -c 2000 %s/cats/chelsea_cat_451x300_q90.jpg > %s/cats/truncated.jpg", root, bad))
  sh(string.format(": > %s/misc/empty.png", bad))
  local script = string.format([[
    package.path = %q
    local sere = require "sere"
    local data = require "sere.data"
    local ld = data.Loader {dataset = %q, recipe = data.multicrop_recipe {global_size = 32, local_size = 16,
      local_crops_number = 1, patch_size = 8}, batch_size = 2, threads = 3, drop_last = false}
    local n = 0
    for e = 0, 1 do for batch in ld:epoch(e) do n = n + batch.labels:shape()[1] end end
    io.stdout:write(n, " ", ld:bad_count(), "\n")
    assert(n == 14 and ld:bad_count() == 2)
  ]], package.path, bad)
  local stderr, ok = run_child(script)
  T.eq(ok, true, "the child finished: " .. stderr)
  local _, n_trunc = stderr:gsub("warning: skipping unreadable image: [^\n]*truncated%.jpg", "")
  local _, n_empty = stderr:gsub("warning: skipping unreadable image: [^\n]*empty%.png", "")
  T.eq(n_trunc, 1, "one warning for the truncated file")
  T.eq(n_empty, 1, "one warning for the empty file")
  T.eq(stderr:find("bad files so far: 2", 1, true) ~= nil, true, "running count")
  -- a replaced sample is the next decodable file, deterministically
  local bds = sere.dataset_scan(bad)
  local t_idx
  for i = 1, #bds do if bds:path(i):find("truncated") then t_idx = i end end
  local s = data.sample(bds, t_idx, 0, 5, recipe)
  T.eq(s.labels:totable()[1], bds:label(t_idx % #bds + 1), "label of the replacement")
end)

T.test("errors: empty folder, nothing decodable, bad options", function()
  local empty = base .. "_empty"
  sh("mkdir -p " .. empty)
  T.raises(function() data.Loader {dataset = empty, recipe = recipe, batch_size = 1} end, "no")
  local junk = base .. "_junk"
  sh(string.format("mkdir -p %s/c && : > %s/c/a.jpg && echo hello > %s/c/b.png", junk, junk, junk))
  local stderr, ok = run_child(string.format([[
    package.path = %q
    local data = require "sere.data"
    local ld = data.Loader {dataset = %q, batch_size = 1, threads = 2}
    for _ in ld:epoch(0) do end
  ]], package.path, junk))
  T.eq(ok ~= true, true, "a tree without a decodable file fails")
  T.eq(stderr:find("none of the 2 files", 1, true) ~= nil, true, "clear message: " .. stderr)
  local function new(o, r)
    local opts = {dataset = ds, recipe = r or recipe, batch_size = 1}
    for k, v in pairs(o) do opts[k] = v end
    return data.Loader(opts)
  end
  T.raises(function() new {rank = 2, world_size = 2} end, "rank")
  T.raises(function() new {batch_size = 0} end, "batch_size")
  T.raises(function() new {threads = 0} end, "threads")
  T.raises(function() new({}, data.multicrop_recipe {global_size = 60}) end, "patch size 16 does not divide")
  T.raises(function() new({}, data.multicrop_recipe {global_crops_number = 0}) end, "at least one")
  T.raises(function() new({}, data.multicrop_recipe {pred_ratio = {0.3}, pred_ratio_var = {0.1, 0.1}}) end, "differ")
  local r = data.multicrop_recipe {local_crops_number = 2}
  r["local"][2].size = 48
  T.raises(function() new({}, r) end, "local crop 2 has size 48")
  r = data.multicrop_recipe {}
  r.global[1].p_flip = 2
  T.raises(function() new({}, r) end, "probabilities")
  T.raises(function() sere.loader_new({}, recipe, {batch_size = 1}) end, "Dataset")
end)

sh(string.format("rm -rf %s_tree %s_bad %s_empty %s_junk %s_child.lua %s_child.err", base, base, base, base, base, base))
T.finish()
