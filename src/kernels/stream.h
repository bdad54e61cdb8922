// A STREAM-style memory read benchmark: the bandwidth the decode path is measured against.
#pragma once

#include <cstddef>

#include "core/aligned.h"

namespace dsv3::kernels {

// Sum of n floats (vectorized, one thread).
float SumFloats(const float* data, size_t n);

// n floats set to 1, each page first touched by the thread that ReadPass gives it (as weights
// are read).
AlignedArray<float> ReadBuffer(size_t n);
// One pass over the buffer, split across the thread pool as ParallelFor splits it; returns the
// sum (so that the reads are not optimized away).
float ReadPass(const AlignedArray<float>& buffer);

// Best read bandwidth in GB/s (1e9 bytes/s) over `repeats` parallel passes across a freshly
// allocated buffer of `bytes` bytes, using the current thread count.
double MeasureReadBandwidthGBs(size_t bytes, int repeats);

}  // namespace dsv3::kernels
