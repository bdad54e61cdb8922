// The thread pool behind ParallelFor: ranges cover the work exactly once, nesting runs serially,
// thread counts can change, and many back-to-back regions (as in a decode step) never hang.
#include "core/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace dsv3 {
namespace {

TEST(ParallelFor, CoversEveryItemOnceWithAlignedRanges) {
  for (int threads : {1, 2, 3, 8}) {
    SetNumThreads(threads);
    for (int64_t n : {1, 3, 4, 17, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> calls{0};
      ParallelFor(n, 4, [&](int64_t b, int64_t e, int t) {
        EXPECT_LT(t, threads);
        if (e < n) EXPECT_EQ((e - b) % 4, 0) << "ranges end on the grain";
        for (int64_t i = b; i < e; ++i) hits[i]++;
        calls++;
      });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[i].load(), 1) << threads << " " << n << " " << i;
      EXPECT_LE(calls.load(), threads);
    }
  }
  SetNumThreads(0);
}

TEST(ParallelFor, NestedCallsRunInTheCallingTask) {
  SetNumThreads(4);
  std::atomic<int64_t> sum{0};
  ParallelFor(8, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      ParallelFor(10, 1, [&](int64_t b2, int64_t e2, int t2) {
        EXPECT_EQ(t2, 0);
        sum += e2 - b2;
      });
    }
  });
  EXPECT_EQ(sum.load(), 80);
  SetNumThreads(0);
}

TEST(ParallelFor, ManyShortRegionsAndPoolRestarts) {
  for (int round = 0; round < 20; ++round) {
    SetNumThreads(round % 2 ? 2 : 3);  // a new pool each round, used at once
    std::atomic<int64_t> total{0};
    for (int i = 0; i < 2000; ++i) {
      ParallelFor(64, 4, [&](int64_t b, int64_t e, int) { total += e - b; });
    }
    ASSERT_EQ(total.load(), 2000 * 64);
  }
  SetNumThreads(0);
}

}  // namespace
}  // namespace dsv3
