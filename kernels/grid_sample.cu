// grid_sample.cu — bilinear sampling of [B, C, H, W] maps at the points of
// a [B, Ho, Wo, 2] grid on the GPU: the CUDA path of sere_grid_sample
// (host/ops/grid_sample.c), forward and backward (input and grid), with the
// CPU op's semantics: PyTorch's grid_sample(mode='bilinear',
// padding_mode='zeros', align_corners=False), method.md 6.2.
//
// A point's pixel coordinate px = (x + 1) * W / 2 - 0.5 is computed with
// explicitly rounded f32 operations (__fmul_rn, __fadd_rn, never fused into
// an FMA) as the CPU writes it, so floor(px), on which the grid gradient
// jumps, is the CPU's. Corners outside the map contribute 0 to the value
// and to both gradients.
//
// Forward: one thread per output element (consecutive threads take
// consecutive points of one channel, so the grid and the output are read
// and written coalesced; the map's plane is small and stays in cache).
// Input gradient: a scatter of weight x gradient to the four corners of each
// point. When the [H, W] plane fits in shared memory (the SERE maps are
// 14 x 14 and 6 x 6), one block accumulates a whole plane there with
// shared-memory atomics and then writes it out once, in the gradient's
// dtype, so there is no zero fill and no contention in global memory;
// larger planes fall back to global f32 atomicAdd (PyTorch's way) into a
// zeroed buffer. Either way the order of the atomic additions, and so the
// last bits of the result, may vary from run to run.
// Grid gradient: one thread per point, summing over the channels in order
// (deterministic, and in the CPU's order).
#include "cuda_common.cuh"
#include "grid_sample.h"

static const int sample_threads = 256;
static const size_t plane_shared_max = 48 * 1024;  // default dynamic shared memory per block

// A grid point: its north-west corner (x0, y0), its distances from it, and
// the weights of the nw, ne, sw, se corners.
struct bilinear_point {
  int64_t x0, y0;
  float ax, ay;
  float w[4];
};

template <typename I>
__device__ __forceinline__ bilinear_point locate(const void *grid, int grid_dtype, const sere_layout &gl, I b, I p,
                                                 I Wo, int64_t H, int64_t W) {
  int64_t off = gl.offset + b * gl.stride[0] + (int64_t)(p / Wo) * gl.stride[1] + (int64_t)(p % Wo) * gl.stride[2];
  float gx = (float)sere_load_any(grid, grid_dtype, off),
        gy = (float)sere_load_any(grid, grid_dtype, off + gl.stride[3]);
  float px = __fadd_rn(__fmul_rn(__fadd_rn(gx, 1.0f), 0.5f * (float)W), -0.5f);
  float py = __fadd_rn(__fmul_rn(__fadd_rn(gy, 1.0f), 0.5f * (float)H), -0.5f);
  float fx = floorf(px), fy = floorf(py);
  bilinear_point q;
  q.ax = px - fx;
  q.ay = py - fy;
  q.w[0] = (1 - q.ay) * (1 - q.ax);
  q.w[1] = (1 - q.ay) * q.ax;
  q.w[2] = q.ay * (1 - q.ax);
  q.w[3] = q.ay * q.ax;
  // Clamped into [-2, size] before the integer conversion, as on the CPU:
  // far-away (the -2 fill), infinite or NaN coordinates then only miss the map.
  q.x0 = (int64_t)(fx > -2.f ? (fx < (float)W ? fx : (float)W) : -2.f);
  q.y0 = (int64_t)(fy > -2.f ? (fy < (float)H ? fy : (float)H) : -2.f);
  return q;
}

// Corner k (nw, ne, sw, se) of a point: its row and column.
__device__ __forceinline__ int64_t corner_y(const bilinear_point &q, int k) { return q.y0 + (k >> 1); }
__device__ __forceinline__ int64_t corner_x(const bilinear_point &q, int k) { return q.x0 + (k & 1); }
__device__ __forceinline__ bool inside(int64_t y, int64_t x, int64_t H, int64_t W) {
  return y >= 0 && y < H && x >= 0 && x < W;
}

// The four corner values of a point in the plane at `base` (0 outside the map).
__device__ __forceinline__ void corner_values(const void *in, int in_dtype, const sere_layout &il, int64_t base,
                                              const bilinear_point &q, int64_t H, int64_t W, float v[4]) {
  for (int k = 0; k < 4; k++) {
    int64_t y = corner_y(q, k), x = corner_x(q, k);
    v[k] = inside(y, x, H, W) ? (float)sere_load_any(in, in_dtype, base + y * il.stride[2] + x * il.stride[3]) : 0.0f;
  }
}

template <typename I>
__global__ void grid_sample_forward(const void *in, int in_dtype, sere_layout il, const void *grid, int grid_dtype,
                                    sere_layout gl, void *out, int out_dtype, I C, int64_t H, int64_t W, I Wo, I P,
                                    I n) {
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    I p = i % P, c = i / P % C, b = i / (P * C);
    bilinear_point q = locate(grid, grid_dtype, gl, b, p, Wo, H, W);
    float v[4];
    corner_values(in, in_dtype, il, il.offset + b * il.stride[0] + c * il.stride[1], q, H, W, v);
    sere_store_any(out, out_dtype, i, v[0] * q.w[0] + v[1] * q.w[1] + v[2] * q.w[2] + v[3] * q.w[3]);
  }
}

// Adds weight x g of point (b, c, p) to its corners in the row-major [H, W]
// f32 plane `acc` (shared or global memory).
template <typename I>
__device__ __forceinline__ void scatter_point(float *acc, const void *g, int g_dtype, const sere_layout &gol,
                                              const void *grid, int grid_dtype, const sere_layout &gl, I b, I c, I p,
                                              I Wo, int64_t H, int64_t W) {
  bilinear_point q = locate(grid, grid_dtype, gl, b, p, Wo, H, W);
  float gv = (float)sere_load_any(g, g_dtype,
                                  gol.offset + b * gol.stride[0] + c * gol.stride[1] +
                                      (int64_t)(p / Wo) * gol.stride[2] + (int64_t)(p % Wo) * gol.stride[3]);
  for (int k = 0; k < 4; k++) {
    int64_t y = corner_y(q, k), x = corner_x(q, k);
    if (inside(y, x, H, W)) atomicAdd(acc + y * W + x, q.w[k] * gv);
  }
}

// Input gradient, one block per plane (b, c) at a time, accumulated in
// shared memory (H * W floats) and written out once in gin's dtype.
template <typename I>
__global__ void grid_sample_input_grad_shared(const void *g, int g_dtype, sere_layout gol, const void *grid,
                                              int grid_dtype, sere_layout gl, void *gin, int gin_dtype, I C, int64_t H,
                                              int64_t W, I Wo, I P, I planes) {
  SERE_DYNAMIC_SHARED(float, acc);
  int HW = (int)(H * W);  // fits: the plane is in shared memory
  for (I plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    for (int k = threadIdx.x; k < HW; k += blockDim.x) acc[k] = 0;
    __syncthreads();
    for (I p = threadIdx.x; p < P; p += blockDim.x)
      scatter_point(acc, g, g_dtype, gol, grid, grid_dtype, gl, plane / C, plane % C, p, Wo, H, W);
    __syncthreads();
    for (int k = threadIdx.x; k < HW; k += blockDim.x) sere_store_any(gin, gin_dtype, (int64_t)plane * HW + k, acc[k]);
    __syncthreads();  // acc is cleared for the next plane only after every thread has stored
  }
}

// Input gradient for planes too large for shared memory: one thread per
// output gradient element, global atomics into the zeroed f32 gin.
template <typename I>
__global__ void grid_sample_input_grad_global(const void *g, int g_dtype, sere_layout gol, const void *grid,
                                              int grid_dtype, sere_layout gl, float *gin, I C, int64_t H, int64_t W,
                                              I Wo, I P, I n) {
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    I p = i % P, plane = i / P;
    scatter_point(gin + (int64_t)plane * H * W, g, g_dtype, gol, grid, grid_dtype, gl, plane / C, plane % C, p, Wo, H,
                  W);
  }
}

// Grid gradient, one thread per point (b, p), summing over the channels.
template <typename I>
__global__ void grid_sample_grid_grad(const void *g, int g_dtype, sere_layout gol, const void *grid, int grid_dtype,
                                      sere_layout gl, const void *in, int in_dtype, sere_layout il, void *ggrid,
                                      int ggrid_dtype, I C, int64_t H, int64_t W, I Wo, I P, I n) {
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    I p = i % P, b = i / P;
    bilinear_point q = locate(grid, grid_dtype, gl, b, p, Wo, H, W);
    int64_t g_at =
        gol.offset + b * gol.stride[0] + (int64_t)(p / Wo) * gol.stride[2] + (int64_t)(p % Wo) * gol.stride[3];
    float sx = 0, sy = 0;
    for (I c = 0; c < C; c++) {
      float v[4];  // nw, ne, sw, se
      corner_values(in, in_dtype, il, il.offset + b * il.stride[0] + c * il.stride[1], q, H, W, v);
      float gv = (float)sere_load_any(g, g_dtype, g_at + c * gol.stride[1]);
      sx += ((v[1] - v[0]) * (1 - q.ay) + (v[3] - v[2]) * q.ay) * gv;
      sy += ((v[2] - v[0]) * (1 - q.ax) + (v[3] - v[1]) * q.ax) * gv;
    }
    sere_store_any(ggrid, ggrid_dtype, 2 * (int64_t)i, sx * (0.5f * (float)W));
    sere_store_any(ggrid, ggrid_dtype, 2 * (int64_t)i + 1, sy * (0.5f * (float)H));
  }
}

static unsigned sample_blocks(int64_t n) {
  unsigned b = sere_blocks_for(n, sample_threads);
  return b > 65535u ? 65535u : b;
}

// Every index of an op is at most B * C * P (or B * P): when that fits in
// 31 bits the kernels run with 32-bit indices, whose divisions cost a
// fraction of 64-bit ones (they dominate these memory-light kernels).
static bool wide_indices(int64_t B, int64_t C, int64_t P) { return B * (C > 1 ? C : 1) * (P > 1 ? P : 1) > INT32_MAX; }
#define LAUNCH_INDEXED(wide, kernel, grid, block, smem, ...)         \
  do {                                                               \
    if (wide)                                                        \
      SERE_LAUNCH(kernel<int64_t>, grid, block, smem, __VA_ARGS__);  \
    else                                                             \
      SERE_LAUNCH(kernel<uint32_t>, grid, block, smem, __VA_ARGS__); \
  } while (0)

extern "C" int sere_cuda_grid_sample(const sere_tensor *input, const sere_tensor *grid, sere_tensor *out) {
  int64_t n = sere_numel(out), Wo = grid->shape[2], P = grid->shape[1] * Wo;
  if (n == 0) return 0;
  LAUNCH_INDEXED(wide_indices(input->shape[0], input->shape[1], P), grid_sample_forward, sample_blocks(n),
                 sample_threads, 0, (const void *)input->storage->data, (int)input->dtype, sere_layout_of(input),
                 (const void *)grid->storage->data, (int)grid->dtype, sere_layout_of(grid), sere_data(out),
                 (int)out->dtype, input->shape[1], input->shape[2], input->shape[3], Wo, P, n);
  return SERE_CHECK_LAUNCH("grid_sample (cuda)");
}

// gin = the input gradient, through shared memory or global atomics.
static int input_gradient(const sere_tensor *g, const sere_tensor *grid, sere_tensor *gin) {
  int64_t C = gin->shape[1], H = gin->shape[2], W = gin->shape[3], Wo = grid->shape[2], P = grid->shape[1] * Wo;
  int64_t planes = gin->shape[0] * C;
  bool wide = wide_indices(gin->shape[0], C, P);
  sere_layout gol = sere_layout_of(g), gl = sere_layout_of(grid);
  const void *gd = g->storage->data, *gridd = grid->storage->data;
  size_t plane_bytes = (size_t)(H * W) * sizeof(float);
  if (plane_bytes <= plane_shared_max) {
    int64_t busiest = P > H * W ? P : H * W;  // threads a plane can keep busy
    int threads = busiest >= 256 ? 256 : (int)((busiest + 31) / 32 * 32);
    unsigned blocks = planes > 65535 ? 65535u : (unsigned)planes;
    LAUNCH_INDEXED(wide, grid_sample_input_grad_shared, blocks, threads, plane_bytes, gd, (int)g->dtype, gol, gridd,
                   (int)grid->dtype, gl, sere_data(gin), (int)gin->dtype, C, H, W, Wo, P, planes);
    return SERE_CHECK_LAUNCH("grid_sample backward (cuda)");
  }
  sere_tensor *acc =
      gin->dtype == SERE_F32 ? sere_tensor_retain(gin) : sere_tensor_new_on(SERE_CUDA, SERE_F32, 4, gin->shape);
  if (!acc || sere_fill_raw(acc, 0)) {
    sere_tensor_release(acc);
    return -1;
  }
  int64_t n = planes * P;
  int rc = 0;
  if (n > 0) {
    LAUNCH_INDEXED(wide, grid_sample_input_grad_global, sample_blocks(n), sample_threads, 0, gd, (int)g->dtype, gol,
                   gridd, (int)grid->dtype, gl, (float *)sere_data(acc), C, H, W, Wo, P, n);
    rc = SERE_CHECK_LAUNCH("grid_sample backward (cuda)");
  }
  if (!rc && acc != gin) rc = sere_copy_raw(gin, acc);
  sere_tensor_release(acc);
  return rc;
}

extern "C" int sere_cuda_grid_sample_backward(const sere_tensor *g, const sere_tensor *grid, const sere_tensor *input,
                                              sere_tensor *gin, sere_tensor *ggrid) {
  if (gin && sere_numel(gin) > 0 && input_gradient(g, grid, gin)) return -1;
  int64_t n = ggrid ? sere_numel(ggrid) / 2 : 0;
  if (n == 0) return 0;
  int64_t Wo = grid->shape[2], P = grid->shape[1] * Wo;
  LAUNCH_INDEXED(wide_indices(input->shape[0], input->shape[1], P), grid_sample_grid_grad, sample_blocks(n),
                 sample_threads, 0, (const void *)g->storage->data, (int)g->dtype, sere_layout_of(g),
                 (const void *)grid->storage->data, (int)grid->dtype, sere_layout_of(grid),
                 (const void *)input->storage->data, (int)input->dtype, sere_layout_of(input), sere_data(ggrid),
                 (int)ggrid->dtype, input->shape[1], input->shape[2], input->shape[3], Wo, P, n);
  return SERE_CHECK_LAUNCH("grid_sample backward (cuda)");
}
