// Prompt-sized matrix products on Intel AMX tiles (Sapphire Rapids and later), used by MatMul's
// blocked path when the CPU and the OS allow it.
//
// AMX multiplies BF16 pairs into FP32 accumulators. Weights are exact in BF16 (FP8 E4M3 and BF16
// as stored); activations are float32, so each is split into three BF16 parts (x = x1 + x2 + x3,
// exact for normal floats) and multiplied in three passes: the products are exact and accumulate
// in FP32, as float32 FMAs would. FP8 block scales multiply the per-block partial sums.
#pragma once

#include <cstdint>

#include "kernels/matmul.h"

namespace dsv3::kernels {

// AMX-BF16 present and granted by the OS (arch_prctl XTILEDATA). Checked once.
bool AmxSupported();
// Whether MatMul uses AMX (AmxSupported() and not switched off; see targets.h).
bool AmxEnabled();
void SetAmxEnabled(bool enabled);

// The blocked product of MatMulRows on AMX: Y[t][r - r0] for rows [r0, r1) and T tokens. Returns
// false, computing nothing, when the matrix is not one AMX handles (dtype F32/F16, FP8 blocks
// not multiples of 32 columns / 16 rows); the caller then uses the SIMD path.
bool AmxMatMulRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                   int64_t T, float* y, int64_t y_stride);

}  // namespace dsv3::kernels
