-- test_grid_sample.lua — sere.grid_sample (ops/grid_sample.c): values and
-- gradients (input and grid) against PyTorch's grid_sample(mode='bilinear',
-- padding_mode='zeros', align_corners=False) (reference data from
-- tests/reference/ops_spatial.py: random points, SERE overlap grids with
-- points on crop edges, a flipped crop and the -2 fill, and points exactly
-- on token centres and map edges) and against a direct Lua transcription of
-- method.md 6.2; the halved edges, the all-zero -2 fill, many channels and
-- points (the blocked paths), gradient checks, the two-pass relation
-- alignment of method.md 6.3 against sampling features first, bf16, misuse.
--
-- Tolerance against PyTorch: 1e-5 absolute + 1e-5 relative (f32, four
-- products per value; grid gradients sum over at most 4 channels).
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"
local gradcheck = sere.testing.gradcheck

local TOL = 1e-5
local ref = sere.io.load("tests/data/ops/grid_sample.safetensors")

local leaf = T.leaf

-- method.md 6.2 in Lua doubles.
local function sample_lua(input, grid)
  local s, gs = input:shape(), grid:shape()
  local it, gt = input:totable(), grid:totable()
  local H, W = s[3], s[4]
  local y = {}
  for b = 1, s[1] do
    y[b] = {}
    for c = 1, s[2] do
      local F = it[b][c]
      local function at(r, q) -- 0-based; 0 outside the map
        if r < 0 or r >= H or q < 0 or q >= W then return 0 end
        return F[r + 1][q + 1]
      end
      y[b][c] = {}
      for i = 1, gs[2] do
        y[b][c][i] = {}
        for j = 1, gs[3] do
          local px = ((gt[b][i][j][1] + 1) * W - 1) / 2
          local py = ((gt[b][i][j][2] + 1) * H - 1) / 2
          local x0, y0 = math.floor(px), math.floor(py)
          local ax, ay = px - x0, py - y0
          y[b][c][i][j] = (1 - ax) * (1 - ay) * at(y0, x0) + ax * (1 - ay) * at(y0, x0 + 1)
            + (1 - ax) * ay * at(y0 + 1, x0) + ax * ay * at(y0 + 1, x0 + 1)
        end
      end
    end
  end
  return sere.tensor(y)
end

-- A [B, Ho, Wo, 2] grid whose points are at least 0.15 pixel away from every
-- pixel line (where the grid gradient jumps), some of them partly outside
-- the map (pixel coordinates in (-1, 0) or (W - 1, W)).
local function smooth_grid(B, Ho, Wo, H, W, gen)
  local u = sere.rand({B, Ho, Wo, 2}, {generator = gen}):totable()
  local g = {}
  for b = 1, B do
    g[b] = {}
    for i = 1, Ho do
      g[b][i] = {}
      for j = 1, Wo do
        local p = {}
        for k, size in ipairs({W, H}) do
          local cell = math.floor(u[b][i][j][k] * (size + 1)) - 1 -- -1 .. size - 1
          local frac = 0.15 + 0.7 * (u[b][i][j][k] * (size + 1) % 1)
          p[k] = (2 * (cell + frac) + 1) / size - 1
        end
        g[b][i][j] = p
      end
    end
  end
  return sere.tensor(g)
end

T.test("matches PyTorch grid_sample: values and gradients of input and grid", function()
  for _, c in ipairs({"rand", "overlap", "edges"}) do
    local inp, grid = leaf(ref[c .. ".inp"]), leaf(ref[c .. ".grid"])
    local y = sere.grid_sample(inp, grid)
    T.close(y, ref[c .. ".y"], TOL, TOL, c .. ": y")
    y:backward(ref[c .. ".gy"])
    T.close(inp.grad, ref[c .. ".ginp"], TOL, TOL, c .. ": dinput")
    T.close(grid.grad, ref[c .. ".ggrid"], TOL, TOL, c .. ": dgrid")
  end
end)

T.test("matches a direct transcription of method.md 6.2", function()
  local gen = sere.Generator(7)
  local inp = sere.randn(2, 3, 5, 7)
  local grid = sere.rand({2, 4, 6, 2}, {generator = gen}) * 2.4 - 1.2
  T.close(sere.grid_sample(inp, grid), sample_lua(inp, grid), 1e-5, 1e-5, "random points")
  -- non-contiguous input and grid
  local inp_t = sere.randn(2, 3, 7, 5):transpose(3, 4)
  local grid_t = (sere.rand({2, 2, 4, 6}, {generator = gen}) * 2 - 1):permute(1, 3, 4, 2)
  T.eq(inp_t:is_contiguous(), false); T.eq(grid_t:is_contiguous(), false)
  T.close(sere.grid_sample(inp_t, grid_t), sample_lua(inp_t, grid_t), 1e-5, 1e-5, "non-contiguous")
end)

T.test("many channels and points: channel chunks and point blocks", function()
  local gen = sere.Generator(11)
  local inp = sere.randn(2, 130, 4, 5)                               -- 3 chunks of channels
  local grid = sere.rand({2, 17, 18, 2}, {generator = gen}) * 2.2 - 1.1 -- 306 points: 2 blocks
  T.close(sere.grid_sample(inp, grid), sample_lua(inp, grid), 1e-5, 1e-5, "forward")
  local x, g = leaf(sere.randn(1, 70, 3, 4)), leaf(smooth_grid(1, 17, 16, 3, 4, gen))
  gradcheck(function(a, b) return sere.grid_sample(a, b) end, {x, g}, {max_elems = 100})
  -- input gradient alone (tasks split over channel chunks)
  local x2 = leaf(sere.randn(1, 70, 3, 4))
  gradcheck(function(a) return sere.grid_sample(a, g:detach()) end, {x2}, {max_elems = 100})
end)

T.test("edges are halved, corners quartered, the -2 fill samples exactly 0", function()
  local ones = sere.ones(1, 1, 4, 4)
  -- u = 0 / u = 1 at a token centre row (t = 0.375 -> py = 1), then the corners (0, 0) and (1, 1)
  local grid = sere.tensor({{{{-1, -0.25}, {1, -0.25}, {-1, -1}, {1, 1}, {0, 0}}}})
  local y = sere.grid_sample(ones, grid):reshape(-1)
  T.eq(y, sere.tensor({0.5, 0.5, 0.25, 0.25, 1}))
  local inp, fill = leaf(sere.randn(2, 3, 6, 6)), leaf(sere.full({2, 5, 5, 2}, -2.0))
  local z = sere.grid_sample(inp, fill)
  T.eq(z, sere.zeros(2, 3, 5, 5))
  z:backward(sere.randn(z:shape()))
  T.eq(inp.grad, sere.zeros(2, 3, 6, 6))
  T.eq(fill.grad, sere.zeros(2, 5, 5, 2))
end)

T.test("gradcheck: input and grid, odd sizes, points partly outside", function()
  local gen = sere.Generator(3)
  for _, c in ipairs({{{1, 2, 5, 4}, {3, 4}}, {{2, 1, 3, 7}, {2, 5}}, {{1, 3, 1, 6}, {4, 1}}}) do
    local s, o = c[1], c[2]
    local x, g = leaf(sere.randn(s)), leaf(smooth_grid(s[1], o[1], o[2], s[3], s[4], gen))
    gradcheck(function(a, b) return sere.grid_sample(a, b) end, {x, g})
  end
end)

T.test("gradcheck: non-contiguous input and grid", function()
  local gen = sere.Generator(5)
  local x = leaf(sere.randn(2, 3, 6, 5))                                     -- used as [2, 3, 5, 6]
  local g = leaf(smooth_grid(2, 4, 3, 5, 6, gen):permute(1, 4, 2, 3):contiguous()) -- [2, 2, 4, 3]
  gradcheck(function(a, b) return sere.grid_sample(a:transpose(3, 4), b:permute(1, 3, 4, 2)) end, {x, g})
end)

-- method.md 6.3: sampling the keys then the queries of R = Z^T Z (per image,
-- Z [D, N] on an Hf x Wf grid) equals (G_r Z)(G_c Z)^T formed from features
-- sampled first; gradients to Z agree too.
T.test("two-pass relation alignment equals sampling the features first", function()
  local gen = sere.Generator(9)
  local B, D, Hf, Wf, Sr, Sc = 2, 6, 4, 5, 3, 4
  local N = Hf * Wf
  local gr = sere.rand({B, Sr, Sr, 2}, {generator = gen}) * 2.2 - 1.1
  local gc = sere.rand({B, Sc, Sc, 2}, {generator = gen}) * 2.2 - 1.1
  local z1 = leaf(sere.randn(B, D, Hf, Wf))
  local z2 = leaf(z1:detach())
  local zt = z1:reshape(B, D, N)
  local R = zt:transpose(2, 3):matmul(zt)                                            -- [B, N, N]
  local R1 = sere.grid_sample(R:reshape(B, N, Hf, Wf), gc):reshape(B, N, Sc * Sc)    -- keys
  local R2 = sere.grid_sample(R1:transpose(2, 3):reshape(B, Sc * Sc, Hf, Wf), gr)     -- queries
  R2 = R2:reshape(B, Sc * Sc, Sr * Sr):transpose(2, 3)                               -- [B, Sr^2, Sc^2]
  local a = sere.grid_sample(z2, gr):reshape(B, D, Sr * Sr)
  local b = sere.grid_sample(z2, gc):reshape(B, D, Sc * Sc)
  local F2 = a:transpose(2, 3):matmul(b)
  T.close(R2, F2, 1e-5, 1e-5, "relation")
  local w = sere.randn(R2:shape())
  R2:backward(w)
  F2:backward(w)
  T.close(z1.grad, z2.grad, 1e-4, 1e-5, "dZ")
end)

T.test("bf16 input is computed in f32 and returned as bf16; method form", function()
  local inp = sere.randn(1, 2, 4, 4)
  local grid = sere.rand(1, 3, 3, 2) * 2 - 1
  local y = sere.grid_sample(inp:to("bf16"), grid)
  T.eq(y:dtype(), "bf16")
  T.close(y, sample_lua(inp:to("bf16"):float(), grid), 0.02, 1e-2, "bf16")
  T.eq(inp:grid_sample(grid), sere.grid_sample(inp, grid))
end)

T.test("misuse raises errors naming the op and the shapes", function()
  local inp, grid = sere.randn(2, 3, 5, 5), sere.zeros(2, 4, 4, 2)
  T.raises(function() sere.grid_sample(sere.randn(3, 5, 5), grid) end,
    "grid_sample: input must be a float %[B, C, H, W%] tensor, got f32 of shape %[3, 5, 5%]")
  T.raises(function() sere.grid_sample(inp:long(), grid) end, "got i64 of shape %[2, 3, 5, 5%]")
  T.raises(function() sere.grid_sample(inp, sere.zeros(2, 4, 4, 3)) end,
    "grid must be a float %[2, Ho, Wo, 2%] tensor for input of shape %[2, 3, 5, 5%], got f32 of shape %[2, 4, 4, 3%]")
  T.raises(function() sere.grid_sample(inp, sere.zeros(3, 4, 4, 2)) end, "got f32 of shape %[3, 4, 4, 2%]")
  T.raises(function() sere.grid_sample(inp, sere.zeros(2, 16, 2)) end, "grid must be")
  T.raises(function() sere.grid_sample(inp, grid:long()) end, "got i64")
  T.raises(function() sere.grid_sample(inp) end, "grid_sample: argument #2: expected a tensor")
  T.raises(function() sere.grid_sample(sere.randn(2, 3, 0, 5), grid) end,
    "input of shape %[2, 3, 0, 5%] has an empty map")
end)

T.test("empty batch, no channels, no points", function()
  local x, g = leaf(sere.randn(0, 3, 4, 4)), leaf(sere.zeros(0, 2, 2, 2))
  local y = sere.grid_sample(x, g)
  T.eq(y:shape()[1], 0); T.eq(y:shape()[2], 3)
  y:sum():backward()
  T.eq(x.grad:shape()[1], 0)
  local x2, g2 = leaf(sere.randn(2, 0, 4, 4)), leaf(sere.rand(2, 3, 3, 2))
  sere.grid_sample(x2, g2):sum():backward()
  T.eq(g2.grad, sere.zeros(2, 3, 3, 2))
  local x3 = leaf(sere.randn(2, 3, 4, 4))
  local y3 = sere.grid_sample(x3, sere.zeros(2, 0, 3, 2))
  T.eq(y3:shape()[3], 0)
  y3:sum():backward()
  T.eq(x3.grad, sere.zeros(2, 3, 4, 4))
end)

T.finish()
