#include "tests/kernels_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

void Sgemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float av = ta == Trans::kN ? a[m * lda + k] : a[k * lda + m];
        const float bv = tb == Trans::kN ? b[k * ldb + n] : b[n * ldb + k];
        s += double{av} * bv;
      }
      float& out = c[m * ldc + n];
      out = beta == 0 ? static_cast<float>(s) : static_cast<float>(beta * double{out} + s);
    }
  }
}

// ---- FP8 / BF16 training products (quant_gemm.h) ----

uint16_t Bf16Round(float x) {
  if (std::isnan(x)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const uint32_t lo = bits & 0xFFFF0000u;  // truncated toward zero
  float lo_f;
  std::memcpy(&lo_f, &lo, 4);
  if (lo == bits || std::isinf(x)) return static_cast<uint16_t>(lo >> 16);
  // The neighbour one BF16 ulp further from zero: 2^(e - 7) above lo (e: lo's exponent, -126 for
  // subnormals), computed in double so that it is finite past the largest BF16.
  const int exp_field = static_cast<int>((lo >> 23) & 0xFF);
  const double ulp = std::ldexp(1.0, (exp_field == 0 ? -126 : exp_field - 127) - 7);
  const double mag = std::fabs(double{x}), below = std::fabs(double{lo_f}), above = below + ulp;
  const bool up = mag - below > above - mag ||
                  (mag - below == above - mag && ((lo >> 16) & 1) != 0);  // tie: even one
  return static_cast<uint16_t>((lo >> 16) + (up ? 1 : 0));
}

uint16_t E4M3Round(float y) {
  static const std::vector<double> magnitudes = [] {  // codes 0..126 in increasing order
    std::vector<double> m;
    for (int code = 0; code < 127; ++code) {
      const int e = code >> 3, f = code & 7;
      m.push_back(e == 0 ? std::ldexp(f, -9) : std::ldexp(8 + f, e - 10));
    }
    return m;
  }();
  const double a = std::fabs(double{y});
  int code = 126;
  if (a < magnitudes[126]) {
    // magnitudes[code] <= a < magnitudes[code + 1]
    const auto next = std::upper_bound(magnitudes.begin(), magnitudes.end(), a);
    code = static_cast<int>(next - magnitudes.begin()) - 1;
    const double below = a - magnitudes[code], above = magnitudes[code + 1] - a;
    if (above < below || (above == below && (code & 1) != 0)) ++code;
  }
  const float v = static_cast<float>(std::signbit(y) ? -magnitudes[code] : magnitudes[code]);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<uint16_t>(bits >> 16);
}

float QuantScale(float amax, bool pow2) {
  const float s = amax / 448.0f;
  if (s == 0.0f) return 1.0f;
  return pow2 ? static_cast<float>(std::exp2(std::ceil(std::log2(double{s})))) : s;
}

void QuantizeE4M3(const float* x, int64_t rows, int64_t cols, int64_t ldx, int64_t tile_rows,
                  int64_t tile_cols, bool pow2, uint16_t* q, float* scales) {
  const int64_t tiles_across = (cols + tile_cols - 1) / tile_cols;
  for (int64_t r0 = 0; r0 < rows; r0 += tile_rows) {
    for (int64_t c0 = 0; c0 < cols; c0 += tile_cols) {
      const int64_t r1 = std::min(rows, r0 + tile_rows), c1 = std::min(cols, c0 + tile_cols);
      float amax = 0;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[r * ldx + c]));
      }
      const float scale = QuantScale(amax, pow2);
      scales[(r0 / tile_rows) * tiles_across + c0 / tile_cols] = scale;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) q[r * cols + c] = E4M3Round(x[r * ldx + c] / scale);
      }
    }
  }
}

void Bf16Gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const float* sa,
              int64_t sa_stride, const uint16_t* b, int64_t ldb, const float* sb, int64_t sb_stride,
              float beta, float* c, int64_t ldc, float* abs_sum) {
  const bool scaled = sa != nullptr || sb != nullptr;
  const int64_t block = scaled ? 128 : std::max<int64_t>(K, 1);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0, mag = 0;
      for (int64_t k0 = 0; k0 < K; k0 += block) {
        const int64_t kb = k0 / block;
        const double s = (sa != nullptr ? double{sa[m * sa_stride + kb]} : 1.0) *
                         (sb != nullptr ? double{sb[n * sb_stride + kb]} : 1.0);
        double part = 0, part_mag = 0;
        for (int64_t k = k0; k < std::min(K, k0 + block); ++k) {
          const double p = double{BF16ToF32(a[m * lda + k])} * BF16ToF32(b[n * ldb + k]);
          part += p;
          part_mag += std::fabs(p);
        }
        sum += s * part;
        mag += std::fabs(s) * part_mag;
      }
      float& out = c[m * ldc + n];
      if (beta != 0) {
        mag += std::fabs(double{beta} * out);
        sum += double{beta} * out;
      }
      if (abs_sum != nullptr) abs_sum[m * ldc + n] = static_cast<float>(mag);
      out = static_cast<float>(sum);
    }
  }
}

}  // namespace dsv3::kernels::reference
