-- sere.loss — what the method computes between the networks' outputs and
-- the scalar loss (method.md sections 5.6, 6.3 and 7): overlap grids,
-- channel and pixel self-relations, relation alignment, the iBOT [CLS]
-- and masked-patch losses with their centres, the SERE pixel and channel
-- losses and the total weighting.
--
-- Two exact shortcuts (design.md "where to be better than PyTorch"), each
-- proven equal to the naive computation by tests/lua/test_loss.lua:
--  1. aligned_pixel_relation samples the features at the grid points
--     first and forms (G_r Z)(G_c Z)^T; the N x N relation is never built.
--  2. ibot_patch_loss runs the prototype layer only on masked tokens and
--     on one mean vector per image for the centre (the layer has no bias).
local sere = require "sere"

local loss = {}

-- ---- overlap grids (5.6) -----------------------------------------------------
local function mapping_list(m)
  if sere.is_tensor(m) then m = m:float():reshape(-1, 5):totable() end
  return m
end

--- overlap_grids(maps_q, maps_k, S): for pairs of crop mappings (x, y, w,
--- h, flip) in original-image pixels (tensors [P, 5] or arrays of
--- 5-element tables), the S x S sampling grids of the pairs' intersection
--- in each crop's frame: two f32 tensors [P, S, S, 2] holding (x, y) in
--- [-1, 1]; flipped views mirror x; pairs without overlap are filled with -2.
function loss.overlap_grids(maps_q, maps_k, s)
  local q, k = mapping_list(maps_q), mapping_list(maps_k)
  assert(#q == #k, "overlap_grids: the two mapping lists differ in length")
  local gq, gk = {}, {}
  for p = 1, #q do
    local a, b = q[p], k[p]
    local x0, y0 = math.max(a[1], b[1]), math.max(a[2], b[2])
    local x1, y1 = math.min(a[1] + a[3], b[1] + b[3]), math.min(a[2] + a[4], b[2] + b[4])
    for v, m in ipairs({a, b}) do
      local rows = {}
      for i = 0, s - 1 do
        local row = {}
        for j = 0, s - 1 do
          if x0 < x1 and y0 < y1 then
            local u = (x0 - m[1]) / m[3] + j * ((x1 - x0) / m[3]) / (s - 1)
            local t = (y0 - m[2]) / m[4] + i * ((y1 - y0) / m[4]) / (s - 1)
            if m[5] ~= 0 then u = 1 - u end
            row[j + 1] = {2 * u - 1, 2 * t - 1}
          else
            row[j + 1] = {-2, -2}
          end
        end
        rows[i + 1] = row
      end
      if v == 1 then gq[p] = rows else gk[p] = rows end
    end
  end
  return sere.tensor(gq, {dtype = "f32"}), sere.tensor(gk, {dtype = "f32"})
end

-- ---- relations (4.2, 4.3) ----------------------------------------------------
--- channel_relation(z, sigma): z [B, D, N] -> (z / sigma)(z / sigma)^T [B, D, D].
function loss.channel_relation(z, sigma)
  local zs = z / sigma
  return zs:matmul(zs:transpose(2, 3))
end

-- [B, D, M] -> per head group [B, h, M, d]
local function head_split(z, heads)
  local b, d, m = table.unpack(z:shape())
  return z:reshape(b, heads, d // heads, m):transpose(3, 4)
end

--- pixel_relation(z, heads): z [B, D, N] -> [B, h, N, N], per contiguous
--- channel group j of width d = D / h: Z_j Z_j^T * d^-1/2 (naive form).
function loss.pixel_relation(z, heads)
  local zh = head_split(z, heads)
  local d = z:shape()[2] // heads
  return zh:matmul(zh:transpose(3, 4)) * d ^ -0.5
end

--- sample_features(z, hw, grid): bilinear samples of the feature map z
--- [B, D, N] (N = hw[1] * hw[2], row-major) at grid [B, S, S', 2] -> [B, D, S*S'].
function loss.sample_features(z, hw, grid)
  local b, d = z:shape()[1], z:shape()[2]
  local sampled = sere.grid_sample(z:reshape(b, d, hw[1], hw[2]), grid)
  return sampled:reshape(b, d, -1)
end

--- aligned_relation(r, hw, grid_rows, grid_cols): the two-pass alignment
--- of 6.3 on an explicit relation r [B, h, N, N] (keys sampled with
--- grid_cols first, then queries with grid_rows) -> [B, h, Sr^2, Sc^2].
--- The naive form, kept for tests and ablations.
function loss.aligned_relation(r, hw, grid_rows, grid_cols)
  local b, h, n = r:shape()[1], r:shape()[2], r:shape()[3]
  local function sample_last(x, grid, m) -- x [B, h, M, N] -> [B, h, M, S^2]
    local maps = x:reshape(b, h * m, hw[1], hw[2])
    return sere.grid_sample(maps, grid):reshape(b, h, m, -1)
  end
  local keys = sample_last(r, grid_cols, n)              -- [B, h, N, Sc^2]
  local sc2 = keys:shape()[4]
  local queries = sample_last(keys:transpose(3, 4), grid_rows, sc2) -- [B, h, Sc^2, Sr^2]
  return queries:transpose(3, 4)
end

--- aligned_pixel_relation(z, hw, heads, grid_rows, grid_cols): equals
--- aligned_relation(pixel_relation(z, heads), hw, grid_rows, grid_cols)
--- exactly (bilinear sampling is linear), computed as (G_r Z_j)(G_c Z_j)^T
--- * d^-1/2 from features sampled at the grid points (shortcut 1).
function loss.aligned_pixel_relation(z, hw, heads, grid_rows, grid_cols)
  local d = z:shape()[2] // heads
  local zr = head_split(loss.sample_features(z, hw, grid_rows), heads) -- [B, h, Sr^2, d]
  local zc = grid_cols == grid_rows and zr or head_split(loss.sample_features(z, hw, grid_cols), heads)
  return zr:matmul(zc:transpose(3, 4)) * d ^ -0.5
end

-- ---- iBOT (7.1 - 7.4) --------------------------------------------------------
--- teacher_temperature(epoch, warmup, final, warmup_epochs[, start_epoch]):
--- linspace(warmup, final, warmup_epochs) over epochs 0 .. warmup_epochs-1
--- (held at `warmup` for start_epoch epochs first), then `final` (7.1).
function loss.teacher_temperature(epoch, warmup, final, warmup_epochs, start_epoch)
  local e = epoch - (start_epoch or 0)
  if e < 0 then return warmup end
  if e >= warmup_epochs then return final end
  if warmup_epochs == 1 then return warmup end
  return warmup + (final - warmup) * e / (warmup_epochs - 1)
end

local function chunk_rows(t, n) return t:chunk(n, 1) end

--- ibot_cls_loss(teacher_cls, student_cls, center, n_global, teacher_temp,
--- student_temp): teacher_cls [G*B, K] (raw logits), student_cls [V*B, K]
--- (globals first); the mean over the G*(V-1) pairs (g, v != g) of
--- mean_b CE(softmax((t_g - c)/Tt), s_v/Ts) (7.2).
function loss.ibot_cls_loss(teacher_cls, student_cls, center, n_global, teacher_temp, student_temp)
  local t = chunk_rows(teacher_cls:detach(), n_global)
  local s = chunk_rows(student_cls, student_cls:shape()[1] // (teacher_cls:shape()[1] // n_global))
  local total, pairs = nil, 0
  for g = 1, n_global do
    for v = 1, #s do
      if v ~= g then
        local term = sere.soft_cross_entropy(s[v], t[g], center, student_temp, teacher_temp):mean()
        total = total and total + term or term
        pairs = pairs + 1
      end
    end
  end
  return total / pairs
end

--- ibot_mim_loss(teacher_patch, student_patch, masks, center2, teacher_temp,
--- student_temp): patch logits [G*B, N, K] of the same crops, masks bool
--- [G*B, N] (or [G*B, hp, wp]); per image the masked tokens' CE summed and
--- divided by max(1, #masked), then averaged over all images (7.3). The
--- naive form: every token's logits are given.
function loss.ibot_mim_loss(teacher_patch, student_patch, masks, center2, teacher_temp, student_temp)
  local rows = student_patch:shape()[1]
  local m = masks:reshape(rows, -1):float()
  local ce = sere.soft_cross_entropy(student_patch, teacher_patch:detach(), center2, student_temp, teacher_temp)
  local per_image = (ce * m):sum(2) / m:sum(2):clamp(1, nil)
  return per_image:mean()
end

--- ibot_patch_loss(student_head, teacher_head, teacher_features,
--- student_features, masks, center2, teacher_temp, student_temp): the MIM loss of ibot_mim_loss and
--- the teacher's mean patch logit per image (for the centre), computed
--- with the head's prototype layers on the masked tokens only, and on
--- one mean feature vector per image (shortcut 2). features are the
--- normalised head features [G*B, 1+N, bottleneck] (class token first).
--- Returns loss, teacher_mean_patch_logits [G*B, K].
function loss.ibot_patch_loss(student_head, teacher_head, teacher_features, student_features, masks, center2,
                              teacher_temp, student_temp)
  local rows, n1 = student_features:shape()[1], student_features:shape()[2]
  local n = n1 - 1
  local mask = masks:reshape(rows, n)
  local counts = mask:float():sum(2):clamp(1, nil) -- [G*B]
  local t_feat = teacher_features:detach():narrow(2, 2, n)
  local mean_logits = sere.no_grad(function() return teacher_head.last_layer2(t_feat:mean(2)) end)
  local idx = mask:reshape(-1):nonzero():reshape(-1) -- masked token positions in [G*B*N]
  if idx:numel() == 0 then
    return student_features:sum() * 0 + 0, mean_logits -- connected to the graph; + 0 turns -0 into 0
  end
  local s_tok = student_features:narrow(2, 2, n):reshape(rows * n, -1):index_select(1, idx)
  local t_tok = t_feat:reshape(rows * n, -1):index_select(1, idx)
  local s_logits = student_head.last_layer2(s_tok)
  local t_logits = sere.no_grad(function() return teacher_head.last_layer2(t_tok) end)
  local ce = sere.soft_cross_entropy(s_logits, t_logits, center2, student_temp, teacher_temp)
  -- per-token weight 1 / (#masked of its image), then mean over images
  local image_of = (idx - 1):div(n):floor():long() + 1
  local w = (1 / counts):index_select(1, image_of)
  return (ce * w):sum() / rows, mean_logits
end

--- update_center(center, batch_mean, momentum): in place,
--- center <- m * center + (1 - m) * batch_mean (7.4); returns center.
function loss.update_center(center, batch_mean, momentum)
  sere.no_grad(function()
    center:mul_(momentum):add_(batch_mean:reshape(center:shape()), 1 - momentum)
  end)
  return center
end

-- ---- SERE (7.5, 7.6) -----------------------------------------------------------
-- Sum of the terms divided by their count.
local function mean_of(terms)
  local total = terms[1]
  for i = 2, #terms do total = total + terms[i] end
  return total / #terms
end

-- mean over rows of CE(softmax(teacher / tt), student) for one term
local function term(student, teacher, tt)
  return sere.soft_cross_entropy(student, teacher:detach(), nil, 1, tt):mean()
end

--- pixel_loss(teacher_gg, student_gg, lg_pairs, n_global[, teacher_temp]):
--- the SERE pixel loss of 7.5 from aligned relations. teacher_gg,
--- student_gg [G*B, h, Sq, Sk]: each global crop's relation aligned with
--- its own grids; lg_pairs: array indexed g*L + l of {teacher, student}
--- aligned local/global relations [B, h, 36, 36] (teacher raw, the
--- temperature is applied here) or nil. Returns the mean of the
--- G*(G-1) + G*L terms and the terms (gg first, then g*L + l).
function loss.pixel_loss(teacher_gg, student_gg, lg_pairs, n_global, teacher_temp)
  local tt = teacher_temp or 0.5
  local t, s = teacher_gg:chunk(n_global, 1), student_gg:chunk(n_global, 1)
  local terms = {}
  for g = 1, n_global do
    for v = 1, n_global do
      if v ~= g then terms[#terms + 1] = term(s[v], t[g], tt) end
    end
  end
  for _, pair in ipairs(lg_pairs or {}) do terms[#terms + 1] = term(pair[2], pair[1], tt) end
  return mean_of(terms), terms
end

--- pixel_loss_from_features(o): pixel_loss on the SERE pixel heads'
--- features, aligning with shortcut 1. o: teacher_z [G*B, D, Ng] (teacher
--- projection), student_p [G*B, D, Ng] (student predictor, masked
--- globals), student_local_p [L*B, D, Nl] or nil, hw_global, hw_local
--- ({h, w}), heads, n_global, grids_gg_rows / grids_gg_cols [G*B, S, S, 2]
--- (each crop's own frame), grids_lg_local / grids_lg_global
--- [G*L, B, 6, 6, 2] (index g*L + l), teacher_temp (0.5).
function loss.pixel_loss_from_features(o)
  local g_n = o.n_global
  local b = o.teacher_z:shape()[1] // g_n
  local tz = o.teacher_z:detach()
  local t_gg = sere.no_grad(function()
    return loss.aligned_pixel_relation(tz, o.hw_global, o.heads, o.grids_gg_rows, o.grids_gg_cols)
  end)
  local s_gg = loss.aligned_pixel_relation(o.student_p, o.hw_global, o.heads, o.grids_gg_rows, o.grids_gg_cols)
  local pairs_lg = {}
  if o.student_local_p then
    local l_n = o.student_local_p:shape()[1] // b
    local tzc, spc = tz:chunk(g_n, 1), o.student_local_p:chunk(l_n, 1)
    for g = 1, g_n do
      for l = 1, l_n do
        local i = (g - 1) * l_n + l
        local gg, gl = o.grids_lg_global[i], o.grids_lg_local[i]
        local ta = sere.no_grad(function() return loss.aligned_pixel_relation(tzc[g], o.hw_global, o.heads, gg, gg) end)
        pairs_lg[i] = {ta, loss.aligned_pixel_relation(spc[l], o.hw_local, o.heads, gl, gl)}
      end
    end
  end
  return loss.pixel_loss(t_gg, s_gg, pairs_lg, g_n, o.teacher_temp)
end

--- channel_loss(teacher_c, student_c, student_local_c, n_global[,
--- teacher_temp]): the SERE channel loss of 7.6 from channel relations
--- (teacher_c [G*B, D, D] = C^z, student_c [G*B, D, D] and student_local_c
--- [L*B, D, D] or nil = C^p). Returns the mean of the terms and the terms
--- (for each g: the other globals, then the locals).
function loss.channel_loss(teacher_c, student_c, student_local_c, n_global, teacher_temp)
  local tt = teacher_temp or 0.1
  local b = teacher_c:shape()[1] // n_global
  local t, s = teacher_c:chunk(n_global, 1), student_c:chunk(n_global, 1)
  local locals = student_local_c and student_local_c:chunk(student_local_c:shape()[1] // b, 1) or {}
  local terms = {}
  for g = 1, n_global do
    for v = 1, n_global do
      if v ~= g then terms[#terms + 1] = term(s[v], t[g], tt) end
    end
    for l = 1, #locals do terms[#terms + 1] = term(locals[l], t[g], tt) end
  end
  return mean_of(terms), terms
end

--- total_loss(ibot, pixel, channel, alpha, beta): ibot * (4 - alpha - beta) / 2
--- + alpha * pixel + beta * channel (7.7).
function loss.total_loss(ibot, pixel, channel, alpha, beta)
  return ibot * ((4 - alpha - beta) / 2) + pixel * alpha + channel * beta
end

return loss
