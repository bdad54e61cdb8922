// Plain, obviously-correct versions of every kernel, with double accumulation. Tests compare the
// dispatched kernels against these on every compiled SIMD target; nothing in the engine calls them.
#pragma once

#include <cstdint>

#include "kernels/gemm.h"
#include "kernels/matmul.h"

namespace dsv3::kernels::reference {

float WeightAt(const WeightMatrix& w, int64_t r, int64_t c);  // dequantized element
void MatMul(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
            int64_t y_stride);
void MatVecTransposedRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, float* y);
void RmsNorm(const float* x, const float* weight, float eps, int64_t n, float* out);
float Dot(const float* a, const float* b, int64_t n);
void Softmax(float* x, int64_t n);
void SiluMul(const float* gate, const float* up, float* out, int64_t n);
void RopeInterleaved(float* x, const float* cos, const float* sin, int64_t pairs);
void TopK(const float* scores, int64_t n, int64_t k, int32_t* indices);
// C[M, N] = beta * C + op(A) op(B) as kernels::Sgemm (gemm.h), any beta, each element summed in
// double in ascending k and rounded once.
void Sgemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// ---- FP8 / BF16 training products (quant_gemm.h) ----
// BF16 bits of x rounded to nearest, ties to the even neighbour, chosen by comparing x with its
// two BF16 neighbours in double; a NaN gives a NaN.
uint16_t Bf16Round(float x);
// BF16 bits of the E4M3 value nearest y, ties to the even code, saturating at +-448 (the sign of y
// kept, also on zero): a search over the list of the 127 finite E4M3 magnitudes.
uint16_t E4M3Round(float y);
// A tile's scale: amax / 448 in float32, 1 if that is zero; with pow2, 2^ceil(log2(.)) in double.
float QuantScale(float amax, bool pow2);
// x [rows, cols] (ldx) in tiles of tile_rows x tile_cols: scales [ceil(rows / tile_rows),
// ceil(cols / tile_cols)] (row-major) and q [rows, cols] (row stride cols, no padding) with
// q = E4M3Round(x / scale), the division in float32.
void QuantizeE4M3(const float* x, int64_t rows, int64_t cols, int64_t ldx, int64_t tile_rows,
                  int64_t tile_cols, bool pow2, uint16_t* q, float* scales);
// Bf16Gemm (quant_gemm.h) in double, any beta; null scales are ones (K any size when both are).
// abs_sum, when not null, gets |beta C| + sum_k |sa sb A B| per element (same strides as C).
void Bf16Gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const float* sa,
              int64_t sa_stride, const uint16_t* b, int64_t ldb, const float* sb, int64_t sb_stride,
              float beta, float* c, int64_t ldc, float* abs_sum);

}  // namespace dsv3::kernels::reference
