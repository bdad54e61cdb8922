#include "kernels/attention.h"

#include <algorithm>
#include <cmath>

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/attention.cc"
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

// 4 queries x 4 keys at a time with 16 vector accumulators (each loaded vector is used 4 times),
// then the keys left over against the 4 queries, then the queries left over one key at a time.
void QKScoresImpl(const float* Q, int64_t qs, int64_t nq, const float* K, int64_t ks, int64_t nk,
                  int64_t d, float scale, float* scores) {
  const DF df;
  int64_t q = 0;
  for (; q + 4 <= nq; q += 4) {
    float* sq = scores + q * nk;
    int64_t k = 0;
    for (; k + 4 <= nk; k += 4) {
      DotTile<4, 4>(df, Q + q * qs, qs, K + k * ks, ks, d, 4,
                    [&](int64_t a, int b, float s) { sq[a * nk + k + b] = s * scale; });
    }
    for (; k < nk; ++k) {
      DotTile<4, 1>(df, Q + q * qs, qs, K + k * ks, 0, d, 4,
                    [&](int64_t a, int, float s) { sq[a * nk + k] = s * scale; });
    }
  }
  for (; q < nq; ++q) {
    for (int64_t k = 0; k < nk; ++k)
      scores[q * nk + k] = Dot(df, Q + q * qs, K + k * ks, d) * scale;
  }
}

float OnlineSoftmaxImpl(float* x, int64_t n, float& m, float& l) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  float block_max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) block_max = std::max(block_max, x[i]);
  const float m_new = std::max(m, block_max);
  if (m_new == -INFINITY) {  // everything masked so far
    std::fill(x, x + n, 0.0f);
    return 1.0f;
  }
  const float correction = std::exp(m - m_new);
  const auto vm = hn::Set(df, m_new);
  auto vsum = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vm));
    hn::StoreU(e, df, x + i);
    vsum = hn::Add(vsum, e);
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, vsum));
  for (; i < n; ++i) sum += x[i] = std::exp(x[i] - m_new);
  m = m_new;
  l = l * correction + sum;
  return correction;
}

// Four queries' O[q][j .. j + 2N) += sum_k P[q][k] V[k][j ..]: every value vector loaded serves
// four queries, so a block of values is read a quarter as often (from L2, it bounds the step).
// Each output accumulates over k in order, as the one-query loop below does.
HWY_INLINE void PV4Queries(const float* HWY_RESTRICT P, int64_t nk, const float* HWY_RESTRICT V,
                           int64_t vs, int64_t dv, float* HWY_RESTRICT O, int64_t os) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const float* p0 = P;
  const float* p1 = P + nk;
  const float* p2 = P + 2 * nk;
  const float* p3 = P + 3 * nk;
  float* o0 = O;
  float* o1 = O + os;
  float* o2 = O + 2 * os;
  float* o3 = O + 3 * os;
  int64_t j = 0;
  for (; j + 2 * N <= dv; j += 2 * N) {
    auto a0 = hn::LoadU(df, o0 + j), b0 = hn::LoadU(df, o0 + j + N);
    auto a1 = hn::LoadU(df, o1 + j), b1 = hn::LoadU(df, o1 + j + N);
    auto a2 = hn::LoadU(df, o2 + j), b2 = hn::LoadU(df, o2 + j + N);
    auto a3 = hn::LoadU(df, o3 + j), b3 = hn::LoadU(df, o3 + j + N);
    for (int64_t k = 0; k < nk; ++k) {
      const float* v = V + k * vs + j;
      const auto va = hn::LoadU(df, v), vb = hn::LoadU(df, v + N);
      auto p = hn::Set(df, p0[k]);
      a0 = hn::MulAdd(p, va, a0);
      b0 = hn::MulAdd(p, vb, b0);
      p = hn::Set(df, p1[k]);
      a1 = hn::MulAdd(p, va, a1);
      b1 = hn::MulAdd(p, vb, b1);
      p = hn::Set(df, p2[k]);
      a2 = hn::MulAdd(p, va, a2);
      b2 = hn::MulAdd(p, vb, b2);
      p = hn::Set(df, p3[k]);
      a3 = hn::MulAdd(p, va, a3);
      b3 = hn::MulAdd(p, vb, b3);
    }
    hn::StoreU(a0, df, o0 + j);
    hn::StoreU(b0, df, o0 + j + N);
    hn::StoreU(a1, df, o1 + j);
    hn::StoreU(b1, df, o1 + j + N);
    hn::StoreU(a2, df, o2 + j);
    hn::StoreU(b2, df, o2 + j + N);
    hn::StoreU(a3, df, o3 + j);
    hn::StoreU(b3, df, o3 + j + N);
  }
  for (; j < dv; ++j) {
    for (int a = 0; a < 4; ++a) {
      float acc = O[a * os + j];
      for (int64_t k = 0; k < nk; ++k) acc += P[a * nk + k] * V[k * vs + j];
      O[a * os + j] = acc;
    }
  }
}

// O[q] += sum_k P[q][k] V[k]: four queries at a time, then one at a time with 8 vectors of O per
// pass so they stay in registers.
void PVAccumulateImpl(const float* P, int64_t nq, int64_t nk, const float* V, int64_t vs,
                      int64_t dv, float* O, int64_t os) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t q0 = 0;
  for (; q0 + 4 <= nq; q0 += 4) PV4Queries(P + q0 * nk, nk, V, vs, dv, O + q0 * os, os);
  for (int64_t q = q0; q < nq; ++q) {
    const float* p = P + q * nk;
    float* o = O + q * os;
    int64_t j = 0;
    for (; j + 8 * N <= dv; j += 8 * N) {
      auto o0 = hn::LoadU(df, o + j), o1 = hn::LoadU(df, o + j + N);
      auto o2 = hn::LoadU(df, o + j + 2 * N), o3 = hn::LoadU(df, o + j + 3 * N);
      auto o4 = hn::LoadU(df, o + j + 4 * N), o5 = hn::LoadU(df, o + j + 5 * N);
      auto o6 = hn::LoadU(df, o + j + 6 * N), o7 = hn::LoadU(df, o + j + 7 * N);
      for (int64_t k = 0; k < nk; ++k) {
        const auto pk = hn::Set(df, p[k]);
        const float* v = V + k * vs + j;
        o0 = hn::MulAdd(pk, hn::LoadU(df, v), o0);
        o1 = hn::MulAdd(pk, hn::LoadU(df, v + N), o1);
        o2 = hn::MulAdd(pk, hn::LoadU(df, v + 2 * N), o2);
        o3 = hn::MulAdd(pk, hn::LoadU(df, v + 3 * N), o3);
        o4 = hn::MulAdd(pk, hn::LoadU(df, v + 4 * N), o4);
        o5 = hn::MulAdd(pk, hn::LoadU(df, v + 5 * N), o5);
        o6 = hn::MulAdd(pk, hn::LoadU(df, v + 6 * N), o6);
        o7 = hn::MulAdd(pk, hn::LoadU(df, v + 7 * N), o7);
      }
      hn::StoreU(o0, df, o + j);
      hn::StoreU(o1, df, o + j + N);
      hn::StoreU(o2, df, o + j + 2 * N);
      hn::StoreU(o3, df, o + j + 3 * N);
      hn::StoreU(o4, df, o + j + 4 * N);
      hn::StoreU(o5, df, o + j + 5 * N);
      hn::StoreU(o6, df, o + j + 6 * N);
      hn::StoreU(o7, df, o + j + 7 * N);
    }
    for (; j + N <= dv; j += N) {
      auto acc = hn::LoadU(df, o + j);
      for (int64_t k = 0; k < nk; ++k)
        acc = hn::MulAdd(hn::Set(df, p[k]), hn::LoadU(df, V + k * vs + j), acc);
      hn::StoreU(acc, df, o + j);
    }
    for (; j < dv; ++j) {
      float acc = o[j];
      for (int64_t k = 0; k < nk; ++k) acc += p[k] * V[k * vs + j];
      o[j] = acc;
    }
  }
}

void ScaleImpl(float a, float* y, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(va, hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] *= a;
}

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv3::kernels {

HWY_EXPORT(QKScoresImpl);
HWY_EXPORT(OnlineSoftmaxImpl);
HWY_EXPORT(PVAccumulateImpl);
HWY_EXPORT(ScaleImpl);

void QKScores(const float* Q, int64_t q_stride, int64_t nq, const float* K, int64_t k_stride,
              int64_t nk, int64_t d, float scale, float* scores) {
  HWY_DYNAMIC_DISPATCH(QKScoresImpl)(Q, q_stride, nq, K, k_stride, nk, d, scale, scores);
}
float OnlineSoftmax(float* scores, int64_t n, float& m, float& l) {
  return HWY_DYNAMIC_DISPATCH(OnlineSoftmaxImpl)(scores, n, m, l);
}
void PVAccumulate(const float* P, int64_t nq, int64_t nk, const float* V, int64_t v_stride,
                  int64_t dv, float* O, int64_t o_stride) {
  HWY_DYNAMIC_DISPATCH(PVAccumulateImpl)(P, nq, nk, V, v_stride, dv, O, o_stride);
}
void Scale(float a, float* y, int64_t n) { HWY_DYNAMIC_DISPATCH(ScaleImpl)(a, y, n); }

}  // namespace dsv3::kernels
#endif  // HWY_ONCE
