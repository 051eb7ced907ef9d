-- flops.lua — the model FLOPs of one iBOT + SERE training step (what
-- bench/step.lua divides by the time and by the GPU's peak to get the model
-- FLOPs utilisation, MFU). Only matrix products are counted, 2*m*n*k each:
--
--   * ViT forward (method 2): patch embedding (a p x p convolution = a
--     matmul of 3p^2 inputs per patch), per block qkv (3D^2), attention
--     Q K^T and P V (T^2 D each), output projection (D^2) and MLP (8 D^2),
--     i.e. 24 T D^2 + 4 T^2 D per image and block, T = 1 + patches.
--   * SERE heads (method 4): the predictor's 1x1 convolution (D^2 per patch)
--     in the student's channel and pixel heads; the teacher only needs the
--     projections Z (batch norm + ReLU, no product). Relations: channel
--     (D^2 N per crop) and pixel relations formed from features sampled at
--     the overlap grids (S_r^2 S_c^2 D per crop pair and image), both sides.
--   * iBOT head (method 3): the MLP (D -> hidden -> hidden -> bottleneck) on
--     every token of the global crops (teacher and student: the teacher's
--     patch bottlenecks feed the MIM loss and the patch centre) and on the
--     class token only of the local crops; the prototype layer (bottleneck
--     -> K) only where a loss looks: class tokens of every crop and the
--     masked tokens (the shortcut of objective.lua).
--   * Backward: twice the student's forward (the gradients of inputs and of
--     weights); the teacher runs forward only.
--
-- Not counted: normalisations, softmaxes, GELU, grid sampling, the
-- optimizer and the EMA (element-wise, memory bound).
--
--   local flops = dofile((arg[0]:match("(.*)/") or ".") .. "/flops.lua")
--   local f = flops.step(shape)   -- f.total, f.teacher, f.student_forward, f.student_backward
local flops = {}

-- One ViT forward over n images of size x size: patch embedding and blocks.
local function vit_forward(s, n, size)
  local patches = (size // s.patch_size) ^ 2
  local t, d = patches + 1, s.embed_dim
  local patch_embed = 2 * n * patches * (3 * s.patch_size ^ 2) * d
  return patch_embed + s.depth * n * (24 * t * d * d + 4 * t * t * d), patches
end

-- The iBOT head's MLP on `tokens` tokens; the prototype layer on `rows` rows.
local function head_mlp(s, tokens)
  local h = s.head_hidden_dim
  return 2 * tokens * (s.embed_dim * h + h * h + h * s.bottleneck_dim)
end
local function prototypes(s, rows, k) return 2 * rows * s.bottleneck_dim * k end

--- step(s) -> {teacher, student_forward, student_backward, total}: FLOPs
--- of one step. s: embed_dim, depth, patch_size, global_size, local_size,
--- head_hidden_dim, bottleneck_dim, out_dim, patch_out_dim (K of the patch
--- prototypes), batch (images B), n_global, n_local (crops per image),
--- masked (masked tokens in the whole batch), overlap_size ({rows, cols})
--- and lg_size (points per side of a local/global grid).
function flops.step(s)
  local d, b = s.embed_dim, s.batch
  local ng, nl = s.n_global * b, s.n_local * b -- crops of each size
  local sr, sc = s.overlap_size[1] ^ 2, s.overlap_size[2] ^ 2
  local pairs_lg = s.n_global * s.n_local * b
  -- aligned pixel relations of one side: global/global and local/global
  local pixel = 2 * ng * sr * sc * d + 2 * pairs_lg * s.lg_size ^ 4 * d

  local teacher_vit, pg = vit_forward(s, ng, s.global_size)
  local teacher = teacher_vit + head_mlp(s, ng * (pg + 1))
    + prototypes(s, ng, s.out_dim) + prototypes(s, s.masked, s.patch_out_dim)
    + 2 * ng * d * d * pg + pixel

  local student_global = vit_forward(s, ng, s.global_size)
  local student_local, pl = vit_forward(s, nl, s.local_size)
  local predictors = 2 * 2 * (ng * pg + nl * pl) * d * d
  local student = student_global + student_local + predictors
    + head_mlp(s, ng * (pg + 1) + nl)
    + prototypes(s, ng + nl, s.out_dim) + prototypes(s, s.masked, s.patch_out_dim)
    + 2 * (ng * pg + nl * pl) * d * d + pixel

  return {teacher = teacher, student_forward = student, student_backward = 2 * student,
    total = teacher + 3 * student}
end

return flops
