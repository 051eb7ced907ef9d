-- test_cuda_spatial.lua — CUDA parity of the spatial ops (kernels/
-- interpolate.cu, kernels/grid_sample.cu) against their CPU versions,
-- forward and backward:
--   * sere.interpolate_bicubic on the positional-embedding resizes of the
--     ViT (14 x 14 -> 6, 14, 16 with the (n + 0.1) / 14 factors, from the
--     permuted table view nn_vit.lua passes), odd and degenerate sizes
--     (1-wide maps, strong up- and downsampling), transposed inputs, bf16;
--   * sere.grid_sample on SERE's maps ([B, C, 14, 14] and [B, C, 6, 6]) at
--     overlap grids from sere.augment_overlap_grids (with the -2 fill of a
--     non-overlapping pair), a relation-sized map with many channels, random
--     grids partly outside [-1, 1], points exactly on token centres and map
--     edges, non-contiguous inputs and grids, bf16 and mixed dtypes, planes
--     too large for the shared-memory path, gradients of input and grid;
--   * misuse: a map and a grid on different devices.
-- Without a device every case is reported as skipped (tests/lua/parity.lua).
local T = dofile("tests/lua/harness.lua")
local P = dofile("tests/lua/parity.lua")
local sere = require "sere"

local gen = sere.Generator(714)

-- Uniform in [lo, hi).
local function uniform(shape, lo, hi)
  return sere.rand(shape, {generator = gen}) * (hi - lo) + lo
end

-- ---- bicubic ------------------------------------------------------------

local function bicubic(sy, sx)
  return function(x) return sere.interpolate_bicubic(x, sy, sx) end
end

-- The ViT's view of its table: [1, g*g, D] -> [1, D, g, g] (permuted, not contiguous).
local function pos_table_view(sy, sx, g, d)
  return function(t) return sere.interpolate_bicubic(t:reshape(1, g, g, d):permute(1, 4, 2, 3), sy, sx) end
end

for _, n in ipairs({6, 14, 16}) do
  P.check(T, {name = string.format("interpolate_bicubic pos-embed table 14 -> %d", n),
              inputs = {P.randn({1, 196, 24})}, fn = pos_table_view((n + 0.1) / 14, (n + 0.1) / 14, 14, 24),
              grad = true})
end
P.check(T, {name = "interpolate_bicubic pos-embed 14 -> 6 x 16 (non-square)",
            inputs = {P.randn({1, 8, 14, 14})}, fn = bicubic(6.1 / 14, 16.1 / 14), grad = true})
P.check(T, {name = "interpolate_bicubic pos-embed 14 -> 6 bf16", dtype = "bf16",
            inputs = {P.randn({1, 196, 16})}, fn = pos_table_view(6.1 / 14, 6.1 / 14, 14, 16), grad = true})

local odd = {
  {{2, 3, 7, 5}, 2.3, 0.7},
  {{1, 1, 1, 9}, 3, 0.5},   -- a single row: every row tap clamps to it
  {{3, 2, 13, 1}, 0.5, 4},  -- a single column
  {{1, 2, 4, 3}, 5.5, 8},   -- strong upsampling: border inputs feed many outputs
  {{1, 3, 33, 31}, 0.19, 0.23}, -- strong downsampling: some inputs feed none
  {{2, 1, 1, 1}, 7, 1},
}
for _, c in ipairs(odd) do
  P.check(T, {name = string.format("interpolate_bicubic [%s] x (%g, %g)", table.concat(c[1], ", "), c[2], c[3]),
              inputs = {P.randn(c[1])}, fn = bicubic(c[2], c[3]), grad = true})
end
P.check(T, {name = "interpolate_bicubic transposed input [2, 3, 7, 5] x (1.7, 2.2)",
            inputs = {P.randn({2, 3, 5, 7})},
            fn = function(x) return sere.interpolate_bicubic(x:transpose(3, 4), 1.7, 2.2) end, grad = true})
P.check(T, {name = "interpolate_bicubic channel slice [1, 4, 9, 9] x 0.8 bf16", dtype = "bf16",
            inputs = {P.randn({1, 9, 9, 9})},
            fn = function(x) return sere.interpolate_bicubic(x:narrow(2, 3, 4), 0.8, 0.8) end, grad = true})

-- ---- grid_sample --------------------------------------------------------

-- Overlap grids [P, S, S, 2] of crop pairs (x, y, w, h, flip) in each
-- crop's frame; the last pair does not overlap (-2 fill).
local function overlap_grids(S)
  local q = sere.tensor({{10, 20, 120, 100, 0}, {0, 0, 200, 200, 1}, {50, 40, 30, 60, 0}, {0, 0, 10, 10, 0}})
  local k = sere.tensor({{40, 0, 150, 90, 1}, {30, 10, 60, 60, 0}, {0, 0, 224, 224, 1}, {100, 100, 50, 50, 0}})
  return sere.augment_overlap_grids(q, k, S)
end

local function sample(input, grid) return sere.grid_sample(input, grid) end

do
  local gq, gk = overlap_grids(13)
  P.check(T, {name = "grid_sample SERE global [4, 12, 14, 14] at 13 x 13 overlap grids (query frame)",
              inputs = {P.randn({4, 12, 14, 14}), gq}, fn = sample, grad = true})
  P.check(T, {name = "grid_sample SERE global [4, 12, 14, 14] at 13 x 13 overlap grids (key frame)",
              inputs = {P.randn({4, 12, 14, 14}), gk}, fn = sample, grad = {true, false}})
  local lq, lk = overlap_grids(6)
  P.check(T, {name = "grid_sample SERE local [4, 10, 6, 6] at 6 x 6 overlap grids",
              inputs = {P.randn({4, 10, 6, 6}), lq}, fn = sample, grad = true})
  P.check(T, {name = "grid_sample SERE global [4, 10, 14, 14] at 6 x 6 overlap grids bf16", dtype = "bf16",
              inputs = {P.randn({4, 10, 14, 14}), lk}, fn = sample, grad = true})
  -- A relation [1, h, N, N] viewed as N * h maps of 14 x 14 (method.md 6.3, keys first).
  P.check(T, {name = "grid_sample relation rows [1, 392, 14, 14] at a 13 x 13 grid",
              inputs = {P.randn({1, 392, 14, 14}), gq:narrow(1, 1, 1)}, fn = sample, grad = true})
end

P.check(T, {name = "grid_sample random grid partly outside [2, 5, 9, 11] at [2, 7, 8]",
            inputs = {P.randn({2, 5, 9, 11}), uniform({2, 7, 8, 2}, -1.3, 1.3)}, fn = sample, grad = true})
P.check(T, {name = "grid_sample far outside and at the borders [1, 3, 5, 4] at [1, 9, 9]",
            inputs = {P.randn({1, 3, 5, 4}), uniform({1, 9, 9, 2}, -2.5, 2.5)}, fn = sample, grad = true})
P.check(T, {name = "grid_sample odd [3, 1, 1, 7] at [3, 1, 33]",
            inputs = {P.randn({3, 1, 1, 7}), uniform({3, 1, 33, 2}, -1.1, 1.1)}, fn = sample, grad = true})

-- Points exactly on token centres (integer pixel coordinates, where the grid
-- gradient jumps) and on the map's edges (u = 0, 1).
do
  local H, W, pts = 6, 7, {}
  for i = 0, 7 do
    local row = {}
    for j = 0, 8 do
      local u = j <= W - 1 and (j + 0.5) / W or (j == W and 0 or 1)
      local t = i <= H - 1 and (i + 0.5) / H or (i == H and 0 or 1)
      row[#row + 1] = {2 * u - 1, 2 * t - 1}
    end
    pts[#pts + 1] = row
  end
  P.check(T, {name = "grid_sample token centres and edges [1, 4, 6, 7] at [1, 8, 9]",
              inputs = {P.randn({1, 4, H, W}), sere.tensor({pts})}, fn = sample, grad = true})
end

P.check(T, {name = "grid_sample non-contiguous map and grid [2, 3, 7, 5] at [2, 4, 6]",
            inputs = {P.randn({2, 3, 5, 7}), uniform({2, 2, 4, 6}, -1.2, 1.2)},
            fn = function(x, g) return sere.grid_sample(x:transpose(3, 4), g:permute(1, 3, 4, 2)) end, grad = true})
P.check(T, {name = "grid_sample channel slice of a map [2, 3, 6, 6] at [2, 6, 6]",
            inputs = {P.randn({2, 8, 6, 6}), uniform({2, 6, 6, 2}, -1.1, 1.1)},
            fn = function(x, g) return sere.grid_sample(x:narrow(2, 4, 3), g) end, grad = true})
P.check(T, {name = "grid_sample f32 map at a bf16 grid [2, 4, 14, 14] at [2, 5, 5]",
            inputs = {P.randn({2, 4, 14, 14}), uniform({2, 5, 5, 2}, -1.2, 1.2):to("bf16")}, fn = sample,
            grad = true, grad_tol = 1e-2})
-- 100 x 125 floats exceed 48 KiB: the global-atomics path (f32, and bf16 through an f32 buffer).
P.check(T, {name = "grid_sample large plane [1, 2, 100, 125] at [1, 5, 7]",
            inputs = {P.randn({1, 2, 100, 125}), uniform({1, 5, 7, 2}, -1.1, 1.1)}, fn = sample, grad = true})
P.check(T, {name = "grid_sample large plane [1, 2, 100, 125] at [1, 5, 7] bf16", dtype = "bf16",
            inputs = {P.randn({1, 2, 100, 125}), uniform({1, 5, 7, 2}, -1.1, 1.1)}, fn = sample, grad = true})

-- ---- misuse -------------------------------------------------------------

if P.available then
  T.test("grid_sample: map and grid on different devices", function()
    local x, g = P.randn({1, 2, 4, 4}), uniform({1, 3, 3, 2}, -1, 1)
    T.raises(function() return sere.grid_sample(x:cuda(), g) end, "grid_sample")
    T.raises(function() return sere.grid_sample(x, g:cuda()) end, "grid_sample")
  end)
  T.test("interpolate_bicubic: shape errors on a CUDA tensor", function()
    T.raises(function() return sere.interpolate_bicubic(P.randn({2, 4, 4}):cuda(), 2) end, "interpolate_bicubic")
  end)
else
  T.skip("cuda spatial misuse", P.reason)
end

T.finish()
