#include "kernels/stream.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/aligned.h"
#include "core/parallel.h"

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/stream.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dsv3::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

float SumFloatsImpl(const float* HWY_RESTRICT data, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 = hn::Add(a0, hn::LoadU(df, data + i));
    a1 = hn::Add(a1, hn::LoadU(df, data + i + N));
    a2 = hn::Add(a2, hn::LoadU(df, data + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(df, data + i + 3 * N));
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += data[i];
  return s;
}

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv3::kernels {

HWY_EXPORT(SumFloatsImpl);

float SumFloats(const float* data, size_t n) {
  return HWY_DYNAMIC_DISPATCH(SumFloatsImpl)(data, n);
}

AlignedArray<float> ReadBuffer(size_t n) {
  AlignedArray<float> buffer(n, /*zero=*/false);
  ParallelFor(static_cast<int64_t>(n), 4096, [&](int64_t b, int64_t e, int) {
    std::fill(buffer.data() + b, buffer.data() + e, 1.0f);
  });
  return buffer;
}

float ReadPass(const AlignedArray<float>& buffer) {
  std::vector<float> sums(static_cast<size_t>(NumThreads()));
  ParallelFor(static_cast<int64_t>(buffer.size()), 4096, [&](int64_t b, int64_t e, int t) {
    sums[t] += SumFloats(buffer.data() + b, static_cast<size_t>(e - b));
  });
  float s = 0;
  for (float v : sums) s += v;
  return s;
}

double MeasureReadBandwidthGBs(size_t bytes, int repeats) {
  const AlignedArray<float> buffer = ReadBuffer(bytes / sizeof(float));
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = sink + ReadPass(buffer);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(bytes) / s / 1e9);
  }
  return best;
}

}  // namespace dsv3::kernels
#endif  // HWY_ONCE
