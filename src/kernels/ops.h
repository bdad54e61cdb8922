// Vector operations of the forward pass on float32 data, dispatched to the best SIMD target.
// Each has a plain reference in reference.h; tests compare them on every compiled target.
#pragma once

#include <cstdint>

namespace dsv3::kernels {

// out = x * rsqrt(mean(x^2) + eps) * weight, n elements. out may alias x.
void RmsNorm(const float* x, const float* weight, float eps, int64_t n, float* out);
float Dot(const float* a, const float* b, int64_t n);
// y += a * x
void Axpy(float a, const float* x, float* y, int64_t n);
// y += x
void Add(const float* x, float* y, int64_t n);
// In place: x = softmax(x), computed with the max subtracted.
void Softmax(float* x, int64_t n);
// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)). out may alias gate or up.
void SiluMul(const float* gate, const float* up, float* out, int64_t n);
// Rotates adjacent pairs (x[2i], x[2i+1]) by the angle whose cosine/sine are cos[i]/sin[i].
void RopeInterleaved(float* x, const float* cos, const float* sin, int64_t pairs);
// out[i] = the BF16 value in[i] as float32 (exact).
void BF16ToF32(const uint16_t* in, int64_t n, float* out);
// Indices of the k largest scores, in descending score order; ties go to the lower index.
void TopK(const float* scores, int64_t n, int64_t k, int32_t* indices);

}  // namespace dsv3::kernels
