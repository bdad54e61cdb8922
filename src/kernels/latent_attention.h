// Absorbed MLA attention of one token over its sequence's latent cache (the decode form; see
// model/mla.cc for the algebra): H queries [W_uk^T q_nope | q_pe] of width W = C + R against
// every cached row [c_kv | k_pe], the rows' first C values weighted by the softmax. The kernel
// chooses the hardware: for a BF16 cache on a CPU with AMX tiles the scores and the weighted
// sum run on the tiles (amx.h), otherwise on the SIMD kernels of attention.h (a BF16 cache is
// converted to float32 a block at a time). Rows are split across threads in blocks, each part
// keeping a running softmax per head (flash decoding), and the parts are merged at the end.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/matmul.h"

namespace dsv3::kernels {

struct LatentAttentionShape {
  int64_t heads = 0;   // H
  int64_t width = 0;   // W = C + R: the query and cached row width
  int64_t latent = 0;  // C: the leading values of each row that the probabilities weight
};

// n consecutive cached rows [n, W] of one sequence, float32 or BF16.
struct LatentRows {
  DType type = DType::kF32;  // kF32 or kBF16
  const void* data = nullptr;
  int64_t n = 0;
};

// Bytes of scratch LatentAttention needs for rows of `type` with up to `threads` threads, on any
// target this CPU can run (so forcing a target later never needs more).
size_t LatentAttentionScratchBytes(const LatentAttentionShape& shape, DType type, int threads);

// out[h][j] (rows out_stride floats apart) = sum_s p[h][s] rows[s][j] for j < C, h < H, with
// p[h] = softmax_s(scale * q[h] . rows[s]) and q [H, W]. `scratch` is 64-byte aligned and holds
// LatentAttentionScratchBytes(shape, rows.type, NumThreads()) bytes. `precision` kBF16 lets the
// AMX form take queries and probabilities in one BF16 part instead of two (see amx.h); the SIMD
// form is float32 either way.
void LatentAttention(const LatentAttentionShape& shape, const float* q, const LatentRows& rows,
                     float scale, MatMulPrecision precision, float* out, int64_t out_stride,
                     void* scratch);

}  // namespace dsv3::kernels
