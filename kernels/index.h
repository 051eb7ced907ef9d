/* index.h — the CUDA kernels of host/ops/index.c: bounds-checked index
 * reading, cat's block copies, index_select and its backward, the
 * gather/scatter-add walk, and the prefix-sum compaction behind
 * masked_select and nonzero. All tensors are on the GPU; functions return 0
 * or -1 after sere_fail, except where noted. */
#ifndef SERE_KERNELS_INDEX_H
#define SERE_KERNELS_INDEX_H

#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* idx[i] = index[i] - base (row-major over `index`, an i64 or i32 tensor
 * of any strides) into the contiguous i64 tensor idx of as many elements,
 * checking every value against [base, base + size). Returns 0 when all are
 * in range, 1 when some are not (*bad_pos: the first such flat position,
 * read back after the kernel), -1 on a CUDA error. */
int sere_cuda_read_indices(const sere_tensor *index, int64_t base, int64_t size, sere_tensor *idx,
                           int64_t *bad_pos);

/* Copies t (any strides, out's dtype) into out (contiguous) at `start`
 * along dim. */
int sere_cuda_cat_copy(sere_tensor *out, const sere_tensor *t, int dim, int64_t start);

/* out[o, j, q] = src[o, idx[j], q]: src and out contiguous, of one dtype,
 * viewed as (outer, size, inner) and (outer, nidx, inner). */
int sere_cuda_index_select(sere_tensor *out, const sere_tensor *src, int dim, const sere_tensor *idx);
/* The backward: z[o, idx[j], q] += g[o, j, q] (f32, contiguous; z zeroed
 * by the caller). Repeated indices add up in an unspecified order. */
int sere_cuda_index_select_backward(sere_tensor *z, const sere_tensor *g, int dim, const sere_tensor *idx);

/* The walk of index.c over an index of shape (ndim, shape) holding the
 * 0-based idx, with q = p except q[dim] = idx[p]: gather sets y[p] = x[q];
 * scatter-add does x[q] += y[p] with atomics (float sums in an unspecified
 * order when indices repeat). x and y have any strides and one dtype. */
int sere_cuda_gather_walk(int ndim, const int64_t *shape, int dim, const sere_tensor *idx, const sere_tensor *x,
                          sere_tensor *y);
int sere_cuda_scatter_add_walk(int ndim, const int64_t *shape, int dim, const sere_tensor *idx, sere_tensor *x,
                               const sere_tensor *y);

/* masked_select: the elements of t where mask is true (both views of one
 * shape, row-major), packed into a new 1-D tensor *out. */
int sere_cuda_masked_select(const sere_tensor *t, const sere_tensor *mask, sere_tensor **out);
/* Its backward: z[p] = g[j] for the j-th true position p of mask (z
 * contiguous f32 of mask's shape, zeroed by the caller; g contiguous f32). */
int sere_cuda_masked_unpack(sere_tensor *z, const sere_tensor *mask, const sere_tensor *g);
/* nonzero: the (count, ndim) i64 tensor *out of the positions (+ base) of
 * t's non-zero elements, row-major. */
int sere_cuda_nonzero(const sere_tensor *t, int64_t base, sere_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
