// Work splitting across threads. One process-wide thread count (set by the front end's -t),
// OpenMP underneath; nested calls run serially inside the calling thread.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace dsv3 {

// Number of threads used by ParallelFor; defaults to the number of online CPUs.
int NumThreads();
void SetNumThreads(int n);  // n <= 0 means all CPUs

// Calls f(begin, end, thread) on contiguous, nearly equal ranges covering [0, n), one per thread.
// Ranges are aligned to `grain` items (except the last) so SIMD tiles are not split.
template <typename F>
void ParallelFor(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  const int64_t tiles = (n + grain - 1) / grain;
  const int nt = static_cast<int>(std::min<int64_t>(NumThreads(), tiles));
  if (nt <= 1 || omp_in_parallel()) {
    f(int64_t{0}, n, 0);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int64_t begin = std::min(n, tiles * t / nt * grain);
    const int64_t end = std::min(n, tiles * (t + 1) / nt * grain);
    if (begin < end) f(begin, end, t);
  }
}

}  // namespace dsv3
