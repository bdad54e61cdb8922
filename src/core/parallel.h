// Work splitting across threads: a persistent pool (one process-wide thread count, set by the
// front end's -t) whose idle workers spin briefly and then sleep, so back-to-back parallel
// regions of a decode step start in about a microsecond while a loaded machine is not burnt by
// spinning. Nested calls run serially inside the calling task.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace dsv3 {

// Number of threads used by ParallelFor; defaults to the number of online CPUs.
int NumThreads();
void SetNumThreads(int n);  // n <= 0 means all CPUs

namespace internal {
// Runs fn(ctx, i) for i in [0, n) concurrently, i == 0 on the calling thread; returns when all
// are done. n <= NumThreads().
void RunTasks(int n, void (*fn)(void* ctx, int task), void* ctx);
bool InTask();
}  // namespace internal

// Calls f(begin, end, thread) on contiguous, nearly equal ranges covering [0, n), one per thread.
// Ranges are aligned to `grain` items (except the last) so SIMD tiles are not split.
template <typename F>
void ParallelFor(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  const int64_t tiles = (n + grain - 1) / grain;
  const int nt = static_cast<int>(std::min<int64_t>(NumThreads(), tiles));
  if (nt <= 1 || internal::InTask()) {
    f(int64_t{0}, n, 0);
    return;
  }
  struct Job {
    std::remove_reference_t<F>* f;
    int64_t n, grain, tiles;
    int nt;
  } job{&f, n, grain, tiles, nt};
  internal::RunTasks(
      nt,
      [](void* ctx, int t) {
        const Job& j = *static_cast<Job*>(ctx);
        const int64_t begin = std::min(j.n, j.tiles * t / j.nt * j.grain);
        const int64_t end = std::min(j.n, j.tiles * (t + 1) / j.nt * j.grain);
        if (begin < end) (*j.f)(begin, end, t);
      },
      &job);
}

}  // namespace dsv3
