#include "tests/kernels_reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace dsv3::kernels::reference {

float WeightAt(const WeightMatrix& w, int64_t r, int64_t c) {
  const int64_t i = r * w.cols + c;
  float v = 0;
  switch (w.dtype) {
    case DType::kF32:
      v = static_cast<const float*>(w.data)[i];
      break;
    case DType::kBF16:
      v = BF16ToF32(static_cast<const uint16_t*>(w.data)[i]);
      break;
    case DType::kF16:
      v = F16ToF32(static_cast<const uint16_t*>(w.data)[i]);
      break;
    case DType::kF8E4M3:
      v = E4M3ToF32(static_cast<const uint8_t*>(w.data)[i]);
      break;
    default:
      return NAN;
  }
  if (w.scale != nullptr) v *= w.scale[(r / w.block_rows) * w.scale_cols + c / w.block_cols];
  return v;
}

void MatMul(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
            int64_t y_stride) {
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < w.cols; ++c) s += double{WeightAt(w, r, c)} * x[t * x_stride + c];
      y[t * y_stride + r] = static_cast<float>(s);
    }
  }
}

void MatVecTransposedRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, float* y) {
  for (int64_t c = 0; c < w.cols; ++c) {
    double s = y[c];
    for (int64_t r = r0; r < r1; ++r) s += double{WeightAt(w, r, c)} * x[r - r0];
    y[c] = static_cast<float>(s);
  }
}

void RmsNorm(const float* x, const float* weight, float eps, int64_t n, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double{x[i]} * x[i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i] * inv * weight[i]);
}

float Dot(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double{a[i]} * b[i];
  return static_cast<float>(s);
}

void Softmax(float* x, int64_t n) {
  const double max = *std::max_element(x, x + n);
  double sum = 0;
  std::vector<double> e(n);
  for (int64_t i = 0; i < n; ++i) sum += e[i] = std::exp(x[i] - max);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(e[i] / sum);
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void RopeInterleaved(float* x, const float* cos, const float* sin, int64_t pairs) {
  for (int64_t i = 0; i < pairs; ++i) {
    const double x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = static_cast<float>(x0 * cos[i] - x1 * sin[i]);
    x[2 * i + 1] = static_cast<float>(x0 * sin[i] + x1 * cos[i]);
  }
}

void TopK(const float* scores, int64_t n, int64_t k, int32_t* indices) {
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  std::copy(order.begin(), order.begin() + std::min(k, n), indices);
}

}  // namespace dsv3::kernels::reference
