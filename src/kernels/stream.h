// A STREAM-style memory read benchmark: the bandwidth the decode path is measured against.
#pragma once

#include <cstddef>

namespace dsv3::kernels {

// Sum of n floats (vectorized, one thread).
float SumFloats(const float* data, size_t n);

// Best read bandwidth in GB/s (1e9 bytes/s) over `repeats` parallel passes across a freshly
// allocated buffer of `bytes` bytes, using the current thread count.
double MeasureReadBandwidthGBs(size_t bytes, int repeats);

}  // namespace dsv3::kernels
