// Vector operations (see ops.h), one copy per SIMD target.

#include "kernels/ops.h"

#include <cmath>

#include "core/dtype.h"

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ops.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "kernels/dot-inl.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dsv3::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

HWY_INLINE int64_t Lanes() { return static_cast<int64_t>(hn::Lanes(DF())); }

float DotImpl(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t n) {
  return DotPairs(DF(), a, b, n);
}

void AxpyImpl(float a, const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t n) {
  const DF df;
  const int64_t N = Lanes();
  const auto va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

void AddImpl(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t n) {
  const DF df;
  const int64_t N = Lanes();
  int64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::Add(hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] += x[i];
}

void RmsNormImpl(const float* x, const float* weight, float eps, int64_t n, float* out) {
  const DF df;
  const int64_t N = Lanes();
  const float sum = Dot(df, x, x, n);
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  const auto vinv = hn::Set(df, inv);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(df, x + i), vinv), hn::LoadU(df, weight + i)), df,
               out + i);
  }
  for (; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void SoftmaxImpl(float* x, int64_t n) {
  const DF df;
  const int64_t N = Lanes();
  float max = -INFINITY;
  int64_t i = 0;
  if (n >= N) {
    auto vmax = hn::LoadU(df, x);
    for (i = N; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(df, x + i));
    max = hn::GetLane(hn::MaxOfLanes(df, vmax));
  }
  for (; i < n; ++i) max = std::max(max, x[i]);
  const auto vmax = hn::Set(df, max);
  auto vsum = hn::Zero(df);
  for (i = 0; i + N <= n; i += N) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vmax));
    hn::StoreU(e, df, x + i);
    vsum = hn::Add(vsum, e);
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, vsum));
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  const auto vinv = hn::Set(df, inv);
  for (i = 0; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), vinv), df, x + i);
  for (; i < n; ++i) x[i] *= inv;
}

void SiluMulImpl(const float* gate, const float* up, float* out, int64_t n) {
  const DF df;
  const int64_t N = Lanes();
  const auto one = hn::Set(df, 1.0f);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(df, gate + i);
    const auto silu = hn::Div(g, hn::Add(one, hn::Exp(df, hn::Neg(g))));
    hn::StoreU(hn::Mul(silu, hn::LoadU(df, up + i)), df, out + i);
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void BF16ToF32Impl(const uint16_t* HWY_RESTRICT in, int64_t n, float* HWY_RESTRICT out) {
  const DF df;
  const hn::RebindToUnsigned<DF> du32;
  const hn::Rebind<uint16_t, DF> du16;
  const int64_t N = Lanes();
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto wide = hn::PromoteTo(du32, hn::LoadU(du16, in + i));
    hn::StoreU(hn::BitCast(df, hn::ShiftLeft<16>(wide)), df, out + i);
  }
  for (; i < n; ++i) out[i] = dsv3::BF16ToF32(in[i]);
}

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv3::kernels {

HWY_EXPORT(DotImpl);
HWY_EXPORT(AxpyImpl);
HWY_EXPORT(AddImpl);
HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(SiluMulImpl);
HWY_EXPORT(BF16ToF32Impl);

float Dot(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}
void Axpy(float a, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyImpl)(a, x, y, n);
}
void Add(const float* x, float* y, int64_t n) { HWY_DYNAMIC_DISPATCH(AddImpl)(x, y, n); }
void RmsNorm(const float* x, const float* weight, float eps, int64_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, weight, eps, n, out);
}
void Softmax(float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n); }
void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMulImpl)(gate, up, out, n);
}

void BF16ToF32(const uint16_t* in, int64_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(BF16ToF32Impl)(in, n, out);
}

// A handful of pairs per head: plain code is as fast as SIMD here.
void RopeInterleaved(float* x, const float* cos, const float* sin, int64_t pairs) {
  for (int64_t i = 0; i < pairs; ++i) {
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * cos[i] - x1 * sin[i];
    x[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
  }
}

// Insertion into a sorted list of at most k entries: O(n k), no allocation; k is small
// (experts per token, groups). A later index only displaces an entry with a strictly lower score.
void TopK(const float* scores, int64_t n, int64_t k, int32_t* indices) {
  k = std::min(k, n);
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float s = scores[i];
    if (count == k && !(s > scores[indices[k - 1]])) continue;
    int64_t pos = count < k ? count : k - 1;
    while (pos > 0 && s > scores[indices[pos - 1]]) {
      indices[pos] = indices[pos - 1];
      --pos;
    }
    indices[pos] = static_cast<int32_t>(i);
    if (count < k) ++count;
  }
}

}  // namespace dsv3::kernels
#endif  // HWY_ONCE
