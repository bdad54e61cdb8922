// Float32 dot-product micro-kernels shared by matmul.cc, attention.cc and ops.cc, compiled once per
// SIMD target: include this after "hwy/highway.h" in a file that goes through
// "hwy/foreach_target.h", outside any namespace.
//
// DotTile and Dot accumulate each result in one vector over the whole vectors of its rows, in
// column order (acc = MulAdd(a, b, acc)), reduce it with SumOfLanes and then add the columns past
// the last whole vector one by one. A tile of several rows computes every result exactly as
// DotTile<1, 1> (= Dot) would, so the numbers do not depend on how rows are grouped. DotPairs
// (two accumulators) rounds differently; it keeps ops.cc's Dot as it was.

// Per-target include guard: toggled by foreach_target.h for every target.
#if defined(DSV3_KERNELS_DOT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef DSV3_KERNELS_DOT_INL_H_
#undef DSV3_KERNELS_DOT_INL_H_
#else
#define DSV3_KERNELS_DOT_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace dsv3::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// emit(i, j, A[i] . B[j]) over n floats for i < rows_a (at most kA) and j < kB, where A[i] starts
// at a + i * a_stride and B[j] at b + j * b_stride. All kA rows are read (pass valid rows for the
// unused ones); only the first rows_a are reduced and emitted. Per column vector, the kB vectors of
// B are loaded once and each row of A is loaded once and multiplied with all of them: with
// kA = kB = 4, 16 accumulators and 8 loads per 16 products.
template <int kA, int kB, class DF, class Emit>
HWY_INLINE void DotTile(DF df, const float* HWY_RESTRICT a, int64_t a_stride,
                        const float* HWY_RESTRICT b, int64_t b_stride, int64_t n, int64_t rows_a,
                        Emit&& emit) {
  // The loops over i and j are unrolled completely so that acc and bv live in registers.
  static_assert(1 <= kA && kA <= 4 && 1 <= kB && kB <= 4, "HWY_UNROLL(4) below");
  using V = hn::Vec<DF>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  V acc[kA][kB];
  HWY_UNROLL(4)
  for (int i = 0; i < kA; ++i) {
    HWY_UNROLL(4)
    for (int j = 0; j < kB; ++j) acc[i][j] = hn::Zero(df);
  }
  int64_t c = 0;
  for (; c + N <= n; c += N) {
    V bv[kB];
    HWY_UNROLL(4)
    for (int j = 0; j < kB; ++j) bv[j] = hn::LoadU(df, b + j * b_stride + c);
    HWY_UNROLL(4)
    for (int i = 0; i < kA; ++i) {
      const V av = hn::LoadU(df, a + i * a_stride + c);
      HWY_UNROLL(4)
      for (int j = 0; j < kB; ++j) acc[i][j] = hn::MulAdd(av, bv[j], acc[i][j]);
    }
  }
  // The reduction below indexes by a run-time row count: it reads a copy, so that acc itself is
  // only ever indexed by constants and stays in registers through the loop.
  V sums[kA][kB];
  HWY_UNROLL(4)
  for (int i = 0; i < kA; ++i) {
    HWY_UNROLL(4)
    for (int j = 0; j < kB; ++j) sums[i][j] = acc[i][j];
  }
  for (int64_t i = 0; i < rows_a; ++i) {
    for (int j = 0; j < kB; ++j) {
      float s = hn::GetLane(hn::SumOfLanes(df, sums[i][j]));
      for (int64_t k = c; k < n; ++k) s += a[i * a_stride + k] * b[j * b_stride + k];
      emit(i, j, s);
    }
  }
}

// a . b over n floats with one accumulator: DotTile<1, 1>.
template <class DF>
HWY_INLINE float Dot(DF df, const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t n) {
  float result = 0.0f;
  DotTile<1, 1>(df, a, 0, b, 0, n, 1, [&](int64_t, int, float s) { result = s; });
  return result;
}

// a . b over n floats with two accumulators: pairs of vectors go to the first and second, a last
// whole vector to the first, and the two are added before the horizontal sum.
template <class DF>
HWY_INLINE float DotPairs(DF df, const float* HWY_RESTRICT a, const float* HWY_RESTRICT b,
                          int64_t n) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), s1);
  }
  for (; i + N <= n; i += N) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#endif  // DSV3_KERNELS_DOT_INL_H_
