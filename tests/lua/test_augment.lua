-- test_augment.lua — the image augmentations (method.md 5.2-5.6):
--  * every deterministic op matches Pillow/torchvision byte for byte on
--    crops of three photos, a larger region with crop-sized resizes and a
--    synthetic image of many colours (tests/data/augment, written by
--    tests/reference/augment_ref.py); normalise matches to f32 round-off;
--  * a resize from a DCT-scaled image (denom) maps the box into it;
--  * crop-box and per-crop parameter sampling follow the method's
--    distributions (fixed seeds, bounds of 5 standard errors or more), and
--    the same stream gives the same result;
--  * overlap grids match the reference data and sere.loss.overlap_grids;
--  * misuse raises errors naming the op.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"

local PHOTOS = {"cat", "coffee", "astronaut", "large", "colours"}
local ref = {}
for _, name in ipairs(PHOTOS) do ref[name] = sere.io.load("tests/data/augment/" .. name .. ".safetensors") end

-- Largest absolute difference between two u8 images (as integers).
local function maxdiff(a, b)
  T.eq(table.concat(a:shape(), "x"), table.concat(b:shape(), "x"), "shape")
  return (a:to("i32") - b:to("i32")):abs():max():item()
end

local function each_case(prefix, fn)
  local n = 0
  for _, name in ipairs(PHOTOS) do
    local t = ref[name]
    for key, want in pairs(t) do
      local case = key:match("^output%.(" .. prefix .. ".*)$")
      if case then fn(t["input.image"], case, want, name); n = n + 1 end
    end
  end
  assert(n > 0, "no reference cases for " .. prefix)
end

T.test("bicubic resize equals Pillow's crop + resize(BICUBIC) exactly", function()
  each_case("resize_", function(img, case, want, photo)
    local x, y, w, h, ow, oh = case:match("resize_(%d+)_(%d+)_(%d+)_(%d+)_(%d+)_(%d+)")
    local got = sere.augment_resize(img, {tonumber(x), tonumber(y), tonumber(w), tonumber(h)}, tonumber(ow), tonumber(oh))
    T.eq(maxdiff(got, want), 0, photo .. " " .. case)
  end)
  -- a nil box is the whole image; a transposed (non-contiguous) input works
  local img = ref.cat["input.image"]
  T.eq(maxdiff(sere.augment_resize(img, nil, 24, 18), ref.cat["output.resize_0_0_40_32_24_18"]), 0, "nil box")
  local tr = img:transpose(1, 2)
  T.eq(maxdiff(sere.augment_resize(tr, nil, 18, 24),
               sere.augment_resize(tr:contiguous(), nil, 18, 24)), 0, "non-contiguous input")
end)

T.test("resize from a DCT-scaled image: the full-resolution box mapped into it", function()
  local path = "tests/data/images/chelsea_cat_451x300_q90.jpg" -- 451 x 300
  for _, d in ipairs {2, 4} do
    local small = sere.image_load(path, {denom = d})
    T.eq(table.concat(small:shape(), "x"), math.ceil(300 / d) .. "x" .. math.ceil(451 / d) .. "x3", "1/" .. d)
    -- a box on the small image's pixel grid is that box of the small image
    local x, y, w, h = 13, 7, 80 // d * 2, 60 // d * 2
    local got = sere.augment_resize(small, {d * x, d * y, d * w, d * h}, 32, 24, d)
    T.eq(maxdiff(got, sere.augment_resize(small, {x, y, w, h}, 32, 24)), 0, "grid-aligned box, 1/" .. d)
    -- the whole image, odd width: [0, 451 / d) of ceil(451 / d) pixels
    local whole = sere.augment_resize(small, {0, 0, 451, 300}, 40, 30, d)
    local full = sere.augment_resize(sere.image_load(path), nil, 40, 30)
    T.eq((whole:float() - full:float()):abs():mean():item() < 3, true, "close to the full decode's resize, 1/" .. d)
    T.raises(function() sere.augment_resize(small, {0, 0, small:shape()[2] * d + 1, 300}, 8, 8, d) end, "not inside")
  end
  local img = ref.cat["input.image"]
  T.eq(maxdiff(sere.augment_resize(img, {2, 3, 20, 10}, 7, 5, 1), sere.augment_resize(img, {2, 3, 20, 10}, 7, 5)), 0,
       "denom 1")
  T.raises(function() sere.augment_resize(img, nil, 8, 8, 3) end, "denom must be 1, 2, 4 or 8")
end)

T.test("colour jitter ops equal torchvision's adjust_* on PIL images exactly", function()
  for _, op in ipairs({"brightness", "contrast", "saturation", "hue"}) do
    each_case(op .. "_", function(img, case, want, photo)
      local f = tonumber(case:match("_(%-?[%d.]+)$"))
      T.eq(maxdiff(sere.augment_color(img, op, f), want), 0, photo .. " " .. case)
    end)
  end
end)

T.test("grayscale, solarize, hflip and Gaussian blur equal Pillow exactly", function()
  each_case("grayscale", function(img, _, want, p) T.eq(maxdiff(sere.augment_grayscale(img), want), 0, p) end)
  each_case("solarize", function(img, _, want, p) T.eq(maxdiff(sere.augment_solarize(img), want), 0, p) end)
  each_case("hflip", function(img, _, want, p) T.eq(maxdiff(sere.augment_hflip(img), want), 0, p) end)
  each_case("blur_", function(img, case, want, p)
    T.eq(maxdiff(sere.augment_blur(img, tonumber(case:match("blur_(.*)"))), want), 0, p .. " " .. case)
  end)
  -- the input is left alone
  local img = ref.coffee["input.image"]
  local before = img:clone()
  sere.augment_blur(img, 1.5); sere.augment_hflip(img); sere.augment_color(img, "hue", 0.2)
  T.eq(maxdiff(img, before), 0, "input unchanged")
end)

T.test("a chain of ops equals the Pillow pipeline", function()
  each_case("chain", function(img, _, want, p)
    local x = sere.augment_resize(img, {2, 3, 28, 27}, 32, 32)
    x = sere.augment_hflip(x)
    for _, s in ipairs({{"hue", 0.05}, {"contrast", 1.3}, {"brightness", 0.7}, {"saturation", 1.1}}) do
      x = sere.augment_color(x, s[1], s[2])
    end
    x = sere.augment_solarize(sere.augment_blur(x, 1.1))
    T.eq(maxdiff(x, want), 0, p)
  end)
end)

T.test("normalize equals ToTensor + Normalize; writes into a batch slice", function()
  each_case("normalize", function(img, _, want, p)
    T.close(sere.augment_normalize(img), want, 1e-6, 0, p)
  end)
  local img = ref.cat["input.image"]
  local batch = sere.zeros({2, 3, 32, 40})
  local r = sere.augment_normalize(img, nil, nil, batch[2])
  T.eq(r:shares_storage(batch), true)
  T.close(batch[2], ref.cat["output.normalize"], 1e-6, 0, "slice")
  T.eq(batch[1]:abs():sum():item(), 0, "other slice untouched")
  -- custom mean/std against a Lua loop over totable()
  local out = sere.augment_normalize(img, {0.5, 0.25, 0}, {0.5, 2, 1}):totable()
  local px = img:totable()
  local mean, std = {0.5, 0.25, 0}, {0.5, 2, 1}
  for _, ij in ipairs({{1, 1}, {7, 13}, {32, 40}}) do
    for c = 1, 3 do
      T.close(out[c][ij[1]][ij[2]], (px[ij[1]][ij[2]][c] / 255 - mean[c]) / std[c], 1e-6, 1e-6, "custom")
    end
  end
end)

-- ---- random parameters ----------------------------------------------------

-- Mean and fraction helpers over n draws of fn().
local function rate(n, fn)
  local k = 0
  for _ = 1, n do if fn() then k = k + 1 end end
  return k / n
end

-- |p_hat - p| within 5 standard errors of a Bernoulli(p) mean over n draws.
local function check_rate(got, p, n, what)
  local se = math.sqrt(p * (1 - p) / n)
  if math.abs(got - p) > 5 * se + 1e-12 then
    error(string.format("%s: rate %.4f, expected %.4f +- %.4f", what, got, p, 5 * se))
  end
end

T.test("crop boxes: area fraction and log-aspect distributions, bounds, fallback", function()
  local g = sere.Generator(11)
  local n, W, H = 20000, 500, 375
  local lo, hi = 0.05, 0.4
  local nbins, area_hist, ar_hist = 7, {}, {}
  for b = 1, nbins do area_hist[b], ar_hist[b] = 0, 0 end
  local la, lb = math.log(3 / 4), math.log(4 / 3)
  for _ = 1, n do
    local x, y, w, h = sere.augment_sample_crop(W, H, lo, hi, g)
    assert(x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= W and y + h <= H, "box inside the image")
    -- integer rounding moves area and ratio slightly: clamp into the bins
    local fa = (w * h / (W * H) - lo) / (hi - lo)
    local fr = (math.log(w / h) - la) / (lb - la)
    local ba = math.min(nbins, math.max(1, math.floor(fa * nbins) + 1))
    local br = math.min(nbins, math.max(1, math.floor(fr * nbins) + 1))
    area_hist[ba] = area_hist[ba] + 1
    ar_hist[br] = ar_hist[br] + 1
  end
  -- for 500x375 at these scales every first attempt succeeds: both uniform
  for b = 1, nbins do
    check_rate(area_hist[b] / n, 1 / nbins, n, "area bin " .. b)
    check_rate(ar_hist[b] / n, 1 / nbins, n, "log-aspect bin " .. b)
  end
  -- a 1000x20 strip: no attempt fits (h <= 20 forces w/h > 4/3 far off),
  -- so the centred fallback with w = round(20 * 4/3) = 27
  local x, y, w, h = sere.augment_sample_crop(1000, 20, 0.4, 1, g)
  T.eq(w, 27); T.eq(h, 20); T.eq(x, (1000 - 27) // 2); T.eq(y, 0)
  x, y, w, h = sere.augment_sample_crop(20, 1000, 0.4, 1, g)
  T.eq(w, 20); T.eq(h, 27); T.eq(x, 0); T.eq(y, (1000 - 27) // 2)
  -- an image of extreme aspect (tall photo crop 184x427, ratio 0.43): global
  -- crops mostly succeed, and every box lies inside the image
  for _ = 1, 2000 do
    local bx, by, bw, bh = sere.augment_sample_crop(184, 427, 0.4, 1, g)
    assert(bx >= 0 and by >= 0 and bx + bw <= 184 and by + bh <= 427)
    assert(bw / bh >= 0.74 and bw / bh <= 1.34 or (bw == 184 and bh == 245), "ratio or fallback")
  end
end)

T.test("crop parameters: flip 0.5, jitter 0.8, gray 0.2, blur and solarise rates, factor ranges", function()
  local n = 20000
  local recipes = {
    g1 = {size = 224, scale = {0.4, 1}, p_blur = 1.0, p_solarize = 0},
    g2 = {size = 224, scale = {0.4, 1}, p_blur = 0.1, p_solarize = 0.2},
    loc = {size = 96, scale = {0.05, 0.4}, p_blur = 0.5},
  }
  for name, rc in pairs(recipes) do
    local draws = {}
    local g = sere.Generator(5)
    for i = 1, n do draws[i] = sere.augment_sample_params(500, 375, rc, g) end
    local function r(f) local k = 0; for i = 1, n do if f(draws[i]) then k = k + 1 end end; return k / n end
    check_rate(r(function(p) return p.flip end), 0.5, n, name .. " flip")
    check_rate(r(function(p) return p.jitter end), 0.8, n, name .. " jitter")
    check_rate(r(function(p) return p.gray end), 0.2, n, name .. " gray")
    local pb = rc.p_blur
    if pb == 1 then T.eq(r(function(p) return p.blur end), 1, name .. " blur")
    else check_rate(r(function(p) return p.blur end), pb, n, name .. " blur") end
    if (rc.p_solarize or 0) == 0 then T.eq(r(function(p) return p.solarize end), 0, name .. " solarize")
    else check_rate(r(function(p) return p.solarize end), rc.p_solarize, n, name .. " solarize") end
    local first, sum_s = {}, 0
    for i = 1, n do
      local p = draws[i]
      if p.jitter then
        assert(p.brightness >= 0.6 and p.brightness < 1.4 and p.contrast >= 0.6 and p.contrast < 1.4)
        assert(p.saturation >= 0.8 and p.saturation < 1.2 and p.hue >= -0.1 and p.hue < 0.1)
        first[p.order[1]] = (first[p.order[1]] or 0) + 1
        local seen = {}
        for _, o in ipairs(p.order) do assert(not seen[o], "order is a permutation"); seen[o] = true end
      else
        assert(p.brightness == 1 and p.hue == 0)
      end
      if p.blur then assert(p.sigma >= 0.1 and p.sigma < 2); sum_s = sum_s + p.sigma end
    end
    local nj = 0
    for _, v in pairs(first) do nj = nj + v end
    for _, op in ipairs({"brightness", "contrast", "saturation", "hue"}) do
      check_rate((first[op] or 0) / nj, 0.25, nj, name .. " first op " .. op)
    end
    local nb = r(function(p) return p.blur end) * n
    T.close(sum_s / nb, 1.05, 5 * 0.55 / math.sqrt(nb), 0, name .. " mean sigma") -- U(0.1, 2): sd 0.55
  end
end)

T.test("same stream, same crop; different crop index, different crop", function()
  local img = ref.coffee["input.image"]
  local rc = {size = 16, scale = {0.3, 1}, p_blur = 0.5, p_solarize = 0.2}
  local s = {seed = 7, epoch = 2, sample = 123, crop = 4}
  local a, pa = sere.augment_crop(img, rc, s)
  local b, pb = sere.augment_crop(img, rc, s)
  T.eq(maxdiff(a, b), 0, "same stream")
  T.eq(table.concat(pa.box, ","), table.concat(pb.box, ","))
  local differ = 0
  for c = 5, 12 do
    local _, pc = sere.augment_crop(img, rc, {seed = 7, epoch = 2, sample = 123, crop = c})
    if table.concat(pc.box, ",") ~= table.concat(pa.box, ",") then differ = differ + 1 end
  end
  assert(differ >= 7, "other crops draw other boxes")
  -- a Generator advances: two calls differ, a reset generator repeats
  local g = sere.Generator(3)
  local x1 = {sere.augment_sample_crop(500, 375, 0.05, 0.4, g)}
  local x2 = {sere.augment_sample_crop(500, 375, 0.05, 0.4, g)}
  g.offset = 0
  local x3 = {sere.augment_sample_crop(500, 375, 0.05, 0.4, g)}
  T.eq(table.concat(x1, ","), table.concat(x3, ","))
  assert(table.concat(x1, ",") ~= table.concat(x2, ","))
end)

T.test("augment_crop runs the same pipeline as the single ops", function()
  local img = ref.astronaut["input.image"]
  local rc = {size = 20, scale = {0.2, 1}, p_jitter = 1, p_gray = 0.5, p_blur = 0.5, p_solarize = 0.5}
  for c = 1, 12 do
    local got, p = sere.augment_crop(img, rc, {seed = 1, epoch = 0, sample = 9, crop = c})
    local x = sere.augment_resize(img, p.box, 20, 20)
    if p.flip then x = sere.augment_hflip(x) end
    for _, op in ipairs(p.order) do x = sere.augment_color(x, op, p[op]) end
    if p.gray then x = sere.augment_grayscale(x) end
    if p.blur then x = sere.augment_blur(x, p.sigma) end
    if p.solarize then x = sere.augment_solarize(x) end
    T.eq(maxdiff(got, x), 0, "crop " .. c)
  end
end)

-- ---- overlap grids ---------------------------------------------------------

T.test("overlap grids match the reference data and sere.loss.overlap_grids", function()
  local R = dofile("tests/lua/refdata.lua")
  local t = R.load("overlap_grid")
  local loss = require "sere.loss"
  for _, s in ipairs({13, 6}) do
    local ga, gb = sere.augment_overlap_grids(t["input.mapping_a"], t["input.mapping_b"], s)
    T.close(ga, t["output.grid_a_" .. s], 1e-6, 0, "grid a " .. s)
    T.close(gb, t["output.grid_b_" .. s], 1e-6, 0, "grid b " .. s)
    local la, lb = loss.overlap_grids(t["input.mapping_a"], t["input.mapping_b"], s)
    T.close(ga, la, 1e-6, 0, "lua a"); T.close(gb, lb, 1e-6, 0, "lua b")
  end
  -- hand-computed: q = (0, 0, 10, 10, flipped), k = (5, 0, 10, 10); overlap x in [5, 10]
  local q = sere.tensor({{0, 0, 10, 10, 1}}, {dtype = "f32"})
  local k = sere.tensor({{5, 0, 10, 10, 0}}, {dtype = "f32"})
  local gq, gk = sere.augment_overlap_grids(q, k, 3)
  -- q frame: u = 0.5, 0.75, 1 -> flipped 0.5, 0.25, 0 -> x = 0, -0.5, -1; t = 0, .5, 1 -> y = -1, 0, 1
  T.close(gq[1][2][3][1], -1, 1e-6); T.close(gq[1][1][2][1], -0.5, 1e-6); T.close(gq[1][3][1][2], 1, 1e-6)
  -- k frame: u = 0, 0.25, 0.5 -> x = -1, -0.5, 0
  T.close(gk[1][1][3][1], 0, 1e-6); T.close(gk[1][1][1][1], -1, 1e-6)
  local n1, n2 = sere.augment_overlap_grids(q, sere.tensor({{10, 0, 5, 5, 0}}, {dtype = "f32"}), 4)
  T.eq(n1:min():item(), -2, "touching crops do not overlap"); T.eq(n1:max():item(), -2)
  T.eq(n2:min():item(), -2); T.eq(n2:max():item(), -2)
end)

-- ---- misuse ----------------------------------------------------------------

T.test("misuse raises errors naming the op", function()
  local img = ref.cat["input.image"]
  T.raises(function() sere.augment_resize(sere.zeros({4, 4, 3}), nil, 2, 2) end, "augment_resize: expected a u8 image tensor %[h, w, 3%], got f32 %[4, 4, 3%]")
  T.raises(function() sere.augment_resize(sere.zeros({4, 4}, {dtype = "u8"}), nil, 2, 2) end, "got u8 %[4, 4%]")
  T.raises(function() sere.augment_resize(img, {30, 0, 20, 10}, 8, 8) end, "not inside the 40x32")
  T.raises(function() sere.augment_resize(img, {0, 0, 0, 10}, 8, 8) end, "not inside")
  T.raises(function() sere.augment_resize(img, nil, 0, 8) end, "out_w must be in")
  T.raises(function() sere.augment_color(img, "sharpness", 1) end, "invalid option 'sharpness'")
  T.raises(function() sere.augment_color(img, "hue", 0.7) end, "hue factor must be in %[%-0.5, 0.5%]")
  T.raises(function() sere.augment_color(img, "brightness", -1) end, "brightness factor must be >= 0")
  T.raises(function() sere.augment_blur(img, -1) end, "augment_blur: sigma")
  T.raises(function() sere.augment_normalize(img, nil, nil, sere.zeros({3, 32, 41})) end, "out must be a contiguous CPU f32 tensor %[3, 32, 40%]")
  T.raises(function() sere.augment_normalize(img, nil, {1, 0, 1}) end, "non%-zero")
  T.raises(function() sere.augment_sample_crop(10, 10, 0.5, 0.2, sere.Generator(1)) end, "scale range")
  T.raises(function() sere.augment_sample_crop(10, 10, 0.2, 0.5, 7) end, "expected a sere.Generator")
  T.raises(function() sere.augment_sample_crop(10, 10, 0.2, 0.5, {epoch = 1}) end, "non%-negative integer 'seed'")
  T.raises(function() sere.augment_sample_params(10, 10, {scale = {0.2, 1}}, sere.Generator(1)) end, "recipe.size")
  T.raises(function() sere.augment_overlap_grids(sere.zeros({2, 4}), sere.zeros({2, 5}), 6) end, "mappings %[P, 5%]")
  T.raises(function() sere.augment_overlap_grids(sere.ones({2, 5}), sere.ones({3, 5}), 6) end, "differ in length")
  T.raises(function() sere.augment_overlap_grids(sere.ones({2, 5}), sere.ones({2, 5}), 1) end, "S must be in")
end)

T.finish()
