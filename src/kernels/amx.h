// Prompt-sized matrix products on Intel AMX tiles (Sapphire Rapids and later), used by MatMul's
// blocked path when the CPU and the OS allow it.
//
// AMX multiplies BF16 pairs into FP32 accumulators. Weights are exact in BF16 (FP8 E4M3 and BF16
// as stored); activations are float32, so each is split into three BF16 parts (x = x1 + x2 + x3,
// exact for normal floats) and multiplied in three passes: the products are exact and accumulate
// in FP32, as float32 FMAs would. With MatMulPrecision::kBF16 (matmul.h) only x1, the activation
// rounded to BF16, is used. FP8 block scales multiply the per-block partial sums.
#pragma once

#include <cstdint>

#include "kernels/matmul.h"

namespace dsv3::kernels {

// AMX-BF16 present and granted by the OS (arch_prctl XTILEDATA). Checked once.
bool AmxSupported();
// Whether MatMul uses AMX (AmxSupported() and not switched off; see targets.h).
bool AmxEnabled();
void SetAmxEnabled(bool enabled);

// MatMul splits products of at least 2 * kAmxTokenGrain tokens of a matrix AmxHandles() among
// threads by tokens, in multiples of this.
inline constexpr int64_t kAmxTokenGrain = 64;

// Whether the blocked product of w runs on AMX: AMX enabled, and w BF16 or FP8 with blocks that
// are multiples of 32 columns / 16 rows (F32 and F16 use the SIMD path).
bool AmxHandles(const WeightMatrix& w);

// The blocked product of MatMulRows on AMX: Y[t][r - r0] for rows [r0, r1) and T tokens. Returns
// false, computing nothing, when !AmxHandles(w); the caller then uses the SIMD path.
bool AmxMatMulRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                   int64_t T, float* y, int64_t y_stride, MatMulPrecision precision);

// ---- Absorbed MLA attention over a BF16 latent cache --------------------------------------------
// One token's H absorbed queries q [H, W] (W = C + R: [W_uk^T q_nope | q_pe] per head) against n
// cached BF16 rows [n, W], all heads at once: scores = scale * (q . row) as exact products of the
// float32 query (two BF16 parts, 2^-17 relative) and the BF16 row, accumulated in FP32; the
// probabilities enter the latent-weighted sum in two BF16 parts likewise, so the result is
// float32 attention over the cached values to far below the cache's own rounding. With
// MatMulPrecision::kBF16 both take their first part only (2^-9). Hp = H rounded up to 16.

// Whether AmxLatentAttention handles this shape (AMX enabled, W even, C a multiple of 32).
bool AmxLatentAttentionSupported(int64_t H, int64_t W, int64_t C);
// Size of the prepared queries (uint16 elements) and of the per-call scratch (bytes).
int64_t AmxLatentQueryElements(int64_t H, int64_t W);
int64_t AmxLatentScratchBytes(int64_t W, int64_t C);
// q [H, W] float32 -> tiles (AmxLatentQueryElements(H, W) elements), once per token.
void AmxPrepareLatentQueries(const float* q, int64_t H, int64_t W, uint16_t* tiles);
// Runs the prepared queries over rows [n, W], updating the running softmax state of every head:
// m [Hp] the largest scaled score seen (start at -inf), l [Hp] the sum of exp(score - m) (start at
// 0), o [Hp, C] (rows o_stride floats apart; C + 16 keeps a tile's rows in distinct L1 sets) the
// exp(score - m)-weighted sum of the rows' first C values (start at 0); rows seen earlier are
// rescaled when m grows. Rows of heads >= H are padding. scratch: 64-byte aligned,
// AmxLatentScratchBytes(W, C) bytes.
void AmxLatentAttention(const uint16_t* q_tiles, int64_t H, int64_t W, int64_t C,
                        const uint16_t* rows, int64_t n, float scale, float* m, float* l, float* o,
                        int64_t o_stride, void* scratch, MatMulPrecision precision);

}  // namespace dsv3::kernels
