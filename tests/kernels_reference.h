// Plain, obviously-correct versions of every kernel, with double accumulation. Tests compare the
// dispatched kernels against these on every compiled SIMD target; nothing in the engine calls them.
#pragma once

#include <cstdint>

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

}  // namespace dsv3::kernels::reference
