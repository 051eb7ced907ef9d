-- test_decode.lua — image decoding (sere.image_load / image_decode) and
-- the PNG writer: every photo in tests/data/images gives the size and mean
-- RGB of tests/data/images' reference table (shared/data/README.md) and the
-- exact per-channel pixel sums that Pillow 9.4 gives (written below, from
-- PIL.Image.open(f).convert("RGB")); DCT-domain downscaling (picked by a
-- hint, or asked for exactly); truncated,
-- corrupt, empty and oversized files raise errors naming the file; PNG
-- round trips.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"

local dir = "tests/data/images/"
-- name = {w, h, mean R, G, B, PIL sum R, G, B}; the 16-bit PNG has no PIL
-- sum (Pillow clips 16-bit grey to 255; the reference keeps the high byte).
local photos = {
  ascent_climbers_256x256_gray16 = {"png", 256, 256, 87.33, 87.33, 87.33},
  astronaut_512x512_rgb = {"png", 512, 512, 141.56, 105.76, 96.48, 37109758, 27724204, 25290362},
  camera_512x512_gray = {"png", 512, 512, 129.06, 129.06, 129.06, 33832495, 33832495, 33832495},
  chelsea_cat_451x300_q90 = {"jpg", 451, 300, 147.71, 111.43, 86.81, 19985086, 15077073, 11745390},
  chelsea_cat_exif_orient6_300x451_q90 = {"jpg", 300, 451, 147.70, 111.44, 86.79, 19983140, 15077510, 11742696},
  china_palace_640x427_q90_422 = {"jpg", 640, 427, 144.73, 145.48, 141.03, 39550504, 39756558, 38540231},
  coffee_600x400_progressive_q90 = {"jpg", 600, 400, 158.51, 85.81, 51.55, 38041576, 20594720, 12372437},
  coins_384x303_gray_q90 = {"jpg", 384, 303, 96.85, 96.85, 96.85, 11269243, 11269243, 11269243},
  grace_hopper_512x600_cmyk_q90 = {"jpg", 512, 600, 82.43, 72.41, 86.39, 25321225, 22243715, 26539531},
  hubble_deep_field_1000x872 = {"jpg", 1000, 872, 18.58, 19.79, 19.09, 16203335, 17258561, 16646155},
  hubble_wide_strip_1000x200 = {"png", 1000, 200, 19.34, 20.13, 19.13, 3867583, 4026567, 3826929},
  microaneurysms_102x102_gray = {"png", 102, 102, 99.34, 99.34, 99.34, 1033532, 1033532, 1033532},
  raccoon_face_512x384_palette = {"png", 512, 384, 110.33, 117.66, 102.40, 21692489, 23132991, 20132897},
  retina_fundus_512x512_rgba = {"png", 512, 512, 159.43, 63.55, 46.12, 41794567, 16660208, 12091313},
  rocket_launch_640x427 = {"jpg", 640, 427, 52.27, 61.29, 82.27, 14283182, 16750506, 22483056},
  rocket_tall_crop_184x427_q90 = {"jpg", 184, 427, 65.77, 72.87, 92.45, 5167422, 5725112, 7263827},
}
local function file(name) return dir .. name .. "." .. photos[name][1] end

local read = T.read_file
local base = os.tmpname()
local made = {base}
local function tmp(suffix)
  local p = base .. suffix
  made[#made + 1] = p
  return p
end
local write = T.write_file

local function channel_sums(img) return img:long():view(-1, 3):sum(1):totable() end

T.test("every photo has the reference size, mean RGB and Pillow's exact pixel sums", function()
  local n = 0
  for name, ref in pairs(photos) do
    local img, denom = sere.image_load(file(name))
    T.eq(img:dtype(), "u8", name .. " dtype")
    T.eq(table.concat(img:shape(), "x"), ref[3] .. "x" .. ref[2] .. "x3", name .. " shape")
    T.eq(img:is_contiguous(), true, name .. " contiguous")
    T.eq(denom, 1, name .. " denom")
    local sums = channel_sums(img)
    for c = 1, 3 do
      T.close(sums[c] / (ref[2] * ref[3]), ref[3 + c], 0.005 + 1e-9, 0, name .. " mean channel " .. c)
      if ref[7] then T.eq(sums[c], ref[6 + c], name .. " sum channel " .. c) end
    end
    n = n + 1
  end
  T.eq(n, 16, "photos checked")
end)

T.test("grey, 16-bit grey and CMYK come out as 3 equal / sensible channels", function()
  for _, name in ipairs {"coins_384x303_gray_q90", "camera_512x512_gray", "ascent_climbers_256x256_gray16"} do
    local img = sere.image_load(file(name)):long()
    T.eq(img:select(3, 1), img:select(3, 2), name .. " R == G")
    T.eq(img:select(3, 1), img:select(3, 3), name .. " R == B")
  end
  -- The 16-bit file keeps the high byte: not clipped to 255 (Pillow's bug) nor all zero.
  local g16 = sere.image_load(file("ascent_climbers_256x256_gray16"))
  T.eq(g16:long():max():item() < 255, true, "16-bit max below 255")
  -- A pixel of the RGBA file under its transparent surround keeps its stored RGB (black), not a composite.
  local rgba = sere.image_load(file("retina_fundus_512x512_rgba")):totable()
  T.eq(table.concat(rgba[1][1], ","), "0,0,0", "RGBA corner")
end)

T.test("image_decode of the bytes equals image_load", function()
  for _, name in ipairs {"coffee_600x400_progressive_q90", "raccoon_face_512x384_palette"} do
    local a = sere.image_load(file(name))
    local b, denom = sere.image_decode(read(file(name)), name)
    T.eq(denom, 1, "denom")
    T.eq(a, b, name)
  end
end)

T.test("DCT scaling: the hint picks the smallest scale that keeps the crop >= the output", function()
  local p = file("chelsea_cat_451x300_q90") -- 451 x 300
  local cases = {
    {{451, 300}, {32, 32}, 8}, -- ceil(300/8) = 38 >= 32
    {{451, 300}, {40, 40}, 4}, -- 38 < 40, ceil(300/4) = 75
    {{451, 300}, {100, 100}, 2},
    {{451, 300}, {226, 150}, 2}, -- ceil(451/2) = 226, exactly enough
    {{451, 300}, {227, 150}, 1},
    {{200, 100}, {224, 224}, 1}, -- crop smaller than the output: full size
  }
  for _, c in ipairs(cases) do
    local img, denom = sere.image_load(p, {crop = c[1], size = c[2]})
    T.eq(denom, c[3], "denom for output " .. c[2][1])
    T.eq(table.concat(img:shape(), "x"), math.ceil(300 / denom) .. "x" .. math.ceil(451 / denom) .. "x3", "scaled shape")
  end
  -- PNG ignores the hint.
  local png, denom = sere.image_load(file("astronaut_512x512_rgb"), {crop = {512, 512}, size = {32, 32}})
  T.eq(denom, 1, "png denom")
  T.eq(table.concat(png:shape(), "x"), "512x512x3", "png shape")
  T.raises(function() sere.image_load(p, {crop = {451, 300}}) end, "both crop")
  T.raises(function() sere.image_load(p, {crop = {451, 0}, size = {3, 3}}) end, "hint.crop%[2%]")
  -- {denom = d} asks for an exact scale, the same decode as a hint that picks d
  for _, d in ipairs {1, 2, 4, 8} do
    local img, denom = sere.image_load(p, {denom = d})
    T.eq(denom, d, "denom " .. d)
    local same = sere.image_load(p, {crop = {451, 300}, size = {math.ceil(451 / d), math.ceil(300 / d)}})
    T.eq((img:int() - same:int()):abs():max():item(), 0, "1/" .. d .. " decode")
    local bytes = sere.image_decode(read(p), "cat", {denom = d})
    T.eq((img:int() - bytes:int()):abs():max():item(), 0, "image_decode 1/" .. d)
  end
  T.eq(select(2, sere.image_load(file("astronaut_512x512_rgb"), {denom = 4})), 1, "png: full size")
  T.raises(function() sere.image_load(p, {denom = 3}) end, "hint.denom must be 1, 2, 4 or 8")
  T.raises(function() sere.image_load(p, {denom = 2, crop = {4, 4}, size = {2, 2}}) end, "not both")
end)

-- A 1/2 decode must look like a 2x2 box average of the full decode.
local function check_half(name, tolerance)
  local full = sere.image_load(file(name)):float()
  local h, w = full:shape()[1], full:shape()[2]
  local half, denom = sere.image_load(file(name), {crop = {w, h}, size = {math.ceil(w / 2), math.ceil(h / 2)}})
  T.eq(denom, 2, name .. " denom")
  T.eq(table.concat(half:shape(), "x"), math.ceil(h / 2) .. "x" .. math.ceil(w / 2) .. "x3", name .. " half shape")
  local h2, w2 = h // 2, w // 2
  local box = full:narrow(1, 1, 2 * h2):narrow(2, 1, 2 * w2):contiguous():view(h2, 2, w2, 2, 3):mean(4):mean(2)
  local diff = (half:float():narrow(1, 1, h2):narrow(2, 1, w2) - box):abs():mean():item()
  if diff > tolerance then error(string.format("%s: mean |half - box| = %.3f > %.1f", name, diff, tolerance)) end
  if diff == 0 then error(name .. ": a 1/2 decode identical to the box average is suspicious") end
end

T.test("a 1/2 decode matches a 2x box downscale of the full decode within a few grey levels", function()
  check_half("chelsea_cat_451x300_q90", 1.5)
  check_half("coffee_600x400_progressive_q90", 1.5)
  check_half("coins_384x303_gray_q90", 1.5)
  check_half("grace_hopper_512x600_cmyk_q90", 1.5)
end)

T.test("truncated, corrupt, empty and unknown files raise errors naming the file", function()
  local jpg = read(file("chelsea_cat_451x300_q90"))
  local png = read(file("astronaut_512x512_rgb"))
  local function fails(bytes, pattern, label)
    local p = tmp("_" .. label)
    write(p, bytes)
    local err = T.raises(function() sere.image_load(p) end, pattern)
    T.eq(err:find(p, 1, true) ~= nil, true, label .. " names the file: " .. err)
    T.raises(function() sere.image_decode(bytes, "mem_" .. label) end, "mem_" .. label)
  end
  fails("", "empty", "empty")
  fails("hello, not an image", "not a JPEG or PNG", "text")
  fails(jpg:sub(1, 2000), "truncated", "jpg_truncated")
  fails(jpg:sub(1, 300), "JPEG", "jpg_header_only")
  fails(png:sub(1, 5000), "truncated", "png_truncated")
  fails(png:sub(1, 30), "PNG", "png_short_header")
  -- Corrupt the PNG's first IDAT payload: CRC or zlib error.
  local idat = png:find("IDAT", 1, true)
  fails(png:sub(1, idat + 20) .. string.rep("\0", 64) .. png:sub(idat + 85), "PNG", "png_corrupt")
  T.raises(function() sere.image_load(tmp("_missing")) end, "cannot open")
  T.raises(function() sere.image_load("tests/data/images") end, "not a regular file")
end)

-- CRC-32 of a string (PNG chunks), to forge a valid IHDR.
local function crc32(s)
  local crc = 0xffffffff
  for i = 1, #s do
    crc = crc ~ s:byte(i)
    for _ = 1, 8 do crc = (crc >> 1) ~ (0xedb88320 & -(crc & 1)) end
  end
  return crc ~ 0xffffffff
end

T.test("headers declaring huge sizes are refused before allocating", function()
  -- JPEG: patch the SOF0 height and width to 65000 x 65000 (4.2e9 pixels).
  local jpg = read(file("chelsea_cat_451x300_q90"))
  local sof = jpg:find("\xff\xc0", 1, true)
  local big = jpg:sub(1, sof + 4) .. string.pack(">I2I2", 65000, 65000) .. jpg:sub(sof + 9)
  T.raises(function() sere.image_decode(big, "big.jpg") end, "big.jpg: image size 65000x65000 is beyond the limit")
  -- PNG: an IHDR of 60000 x 60000 with a correct CRC (sides pass libpng's limit, pixels do not).
  local png = read(file("microaneurysms_102x102_gray"))
  local body = "IHDR" .. string.pack(">I4I4", 60000, 60000) .. png:sub(25, 29)
  local forged = png:sub(1, 12) .. body .. string.pack(">I4", crc32(body)) .. png:sub(34)
  T.raises(function() sere.image_decode(forged, "big.png") end, "big.png: image size 60000x60000 is beyond the limit")
  -- and the unforged bytes still decode (the splice itself is right).
  local same = png:sub(1, 12) .. png:sub(13, 29) .. string.pack(">I4", crc32(png:sub(13, 29))) .. png:sub(34)
  T.eq(sere.image_decode(same), sere.image_load(file("microaneurysms_102x102_gray")), "re-spliced png")
end)

T.test("image_save_png round trips, also from non-contiguous tensors, atomically", function()
  local img = sere.image_load(file("rocket_tall_crop_184x427_q90"))
  local p = tmp("_out.png")
  sere.image_save_png(p, img)
  T.eq(sere.image_load(p), img, "round trip")
  -- a transposed view (w and h swapped) and a narrowed one
  local tr = img:transpose(1, 2)
  sere.image_save_png(p, tr)
  T.eq(sere.image_load(p), tr:contiguous(), "transposed")
  local nar = img:narrow(2, 11, 50)
  sere.image_save_png(p, nar)
  T.eq(sere.image_load(p), nar:contiguous(), "narrowed")
  -- a random image (exact values, every byte)
  local g = sere.Generator(3)
  local r = (sere.rand({7, 5, 3}, {generator = g}) * 255):floor():byte()
  sere.image_save_png(p, r)
  T.eq(sere.image_load(p), r, "random pixels")
  T.raises(function() sere.image_save_png(p, img:float()) end, "image_save_png: want a CPU u8 tensor %[h, w, 3%], got f32 %[427, 184, 3%]")
  T.raises(function() sere.image_save_png(p, img:select(3, 1)) end, "got u8 %[427, 184%]")
  T.raises(function() sere.image_save_png(p, img:narrow(1, 1, 0)) end, "must be in")
  -- failure leaves nothing behind and does not touch the existing file
  T.raises(function() sere.image_save_png(tmp("_nodir") .. "/x.png", img) end, "cannot create")
  T.eq(sere.image_load(p), r, "previous file intact")
end)

for _, p in ipairs(made) do os.remove(p) end
T.finish()
