// Sgemm (kernels/gemm.h) against the plain double-accumulation reference
// (tests/kernels_reference.h) on every SIMD target this CPU supports: all four transpositions, odd
// and empty shapes, row strides wider than the rows, beta 0 over a NaN-filled C and beta 1, and
// results that are bit for bit the same for any thread count and any split of the output. The
// checker itself is checked: it must catch a wrong element, a wrong transposition and a write past
// the rows.
//
// Tolerance: |got - want| <= kRelTol * sum_k |op(A)(m, k) op(B)(k, n)| (+ |beta C| for beta != 0),
// the error of float32 accumulation against a double-precision sum. The kernel sums blocks of 256
// products in float32 and adds the block sums to C, so the longest float32 chain is one block. The
// worst errors seen (K from 64 to 4096, 65536 elements each): 2e-7 of that magnitude with normal
// operands, 1.1e-6 with operands of one sign at K = 256 (no cancellation: the hardest case, rms
// 2.5e-7, tested below). kRelTol = 4e-6 leaves a margin of 3.5 for K up to 4096 and more: a longer
// reduction adds only one rounding per block of 256.
#include "kernels/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "kernels/targets.h"
#include "tests/kernels_reference.h"

namespace dsv3::kernels {
namespace {

constexpr float kRelTol = 4e-6f;     // of sum_k |a b| (see the header comment)
constexpr float kPadding = 1234.5f;  // fills C's row padding, which must stay untouched

const char* Name(Trans t) { return t == Trans::kN ? "N" : "T"; }

struct Problem {
  Trans ta, tb;
  int64_t M, N, K;
  int64_t pad;  // extra floats per row of A, B and C
  float beta;
  bool same_sign = false;  // operands all >= 0
  std::string Describe() const {
    std::ostringstream s;
    s << Name(ta) << Name(tb) << " M=" << M << " N=" << N << " K=" << K << " pad=" << pad
      << " beta=" << beta << (same_sign ? " same sign" : "");
    return s.str();
  }
};

// The stored operands of a problem: A [M, K] or [K, M] with row stride lda (op(A) is [M, K]),
// likewise B, and C [M, N] with stride ldc, its rows padded with kPadding.
struct Operands {
  int64_t lda, ldb, ldc;
  std::vector<float> a, b, c;
};

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> v(static_cast<size_t>(std::max<int64_t>(n, 1)));
  for (float& x : v) x = d(rng);
  return v;
}

Operands Make(const Problem& p, uint32_t seed) {
  Operands o;
  const int64_t a_rows = p.ta == Trans::kN ? p.M : p.K, a_cols = p.ta == Trans::kN ? p.K : p.M;
  const int64_t b_rows = p.tb == Trans::kN ? p.K : p.N, b_cols = p.tb == Trans::kN ? p.N : p.K;
  o.lda = a_cols + p.pad;
  o.ldb = b_cols + p.pad;
  o.ldc = p.N + p.pad;
  o.a = Random(a_rows * o.lda, seed);
  o.b = Random(b_rows * o.ldb, seed + 1);
  if (p.same_sign) {
    for (float& x : o.a) x = std::fabs(x);
    for (float& x : o.b) x = std::fabs(x);
  }
  o.c = Random(p.M * o.ldc, seed + 2);
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t n = 0; n < o.ldc; ++n) {
      float& v = o.c[m * o.ldc + n];
      if (n >= p.N) {
        v = kPadding;
      } else if (p.beta == 0) {
        v = NAN;  // beta 0 must overwrite whatever C holds
      }
    }
  }
  return o;
}

void RunSgemm(const Problem& p, const Operands& o, std::vector<float>& c) {
  c = o.c;
  Sgemm(p.ta, p.tb, p.M, p.N, p.K, o.a.data(), o.lda, o.b.data(), o.ldb, p.beta, c.data(), o.ldc);
}

// Elements of `got` outside the tolerance (or not finite), plus padding floats that changed;
// `first` describes the first one.
int64_t CountMismatches(const Problem& p, const Operands& o, const std::vector<float>& got,
                        std::string* first = nullptr) {
  std::vector<float> want = o.c;
  reference::Sgemm(p.ta, p.tb, p.M, p.N, p.K, o.a.data(), o.lda, o.b.data(), o.ldb, p.beta,
                   want.data(), o.ldc);
  // sum_k |a b| (+ |beta C|): the reference product of the absolute values.
  auto abs = [](std::vector<float> v) {
    for (float& x : v) x = std::fabs(x);
    return v;
  };
  const std::vector<float> abs_a = abs(o.a), abs_b = abs(o.b);
  std::vector<float> mag = abs(o.c);
  reference::Sgemm(p.ta, p.tb, p.M, p.N, p.K, abs_a.data(), o.lda, abs_b.data(), o.ldb,
                   std::fabs(p.beta), mag.data(), o.ldc);
  int64_t bad = 0;
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t n = 0; n < o.ldc; ++n) {
      const int64_t i = m * o.ldc + n;
      bool ok;
      if (n >= p.N) {
        ok = std::memcmp(&got[i], &kPadding, sizeof(float)) == 0;
      } else {
        const float tol = kRelTol * mag[i] + 1e-30f;
        ok = std::isfinite(got[i]) && std::fabs(got[i] - want[i]) <= tol;
      }
      if (!ok && bad++ == 0 && first != nullptr) {
        std::ostringstream s;
        s << p.Describe() << " at m=" << m << " n=" << n << ": got " << got[i] << ", want "
          << (n >= p.N ? kPadding : want[i]) << " (magnitude " << mag[i] << ")";
        *first = s.str();
      }
    }
  }
  return bad;
}

void ExpectMatchesReference(const Problem& p, uint32_t seed = 1) {
  const Operands o = Make(p, seed);
  std::vector<float> got;
  RunSgemm(p, o, got);
  std::string first;
  EXPECT_EQ(CountMismatches(p, o, got, &first), 0) << first;
}

constexpr Trans kTrans[] = {Trans::kN, Trans::kT};

class GemmTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    threads_ = NumThreads();
    ASSERT_TRUE(ForceTarget(GetParam()));
  }
  void TearDown() override {
    ForceTarget("");
    SetNumThreads(threads_);
  }
  int threads_ = 0;
};

TEST_P(GemmTest, ActiveTargetIsTheForcedOne) { EXPECT_EQ(ActiveTarget(), GetParam()); }

// Shapes around the register tiles (4, 6, 12 rows; 4 to 32 columns), the blocks of packed rows
// (96), columns (512) and the reduction (256), with and without row padding.
TEST_P(GemmTest, AllTransposesOddShapesAndStrides) {
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{1, 1, 1},    {1, 7, 3},     {5, 1, 9},     {3, 5, 1},     {13, 17, 19},
                          {37, 53, 71}, {64, 64, 64},  {12, 32, 256}, {25, 70, 513}, {130, 97, 300},
                          {7, 200, 40}, {13, 530, 20}, {20, 48, 30}};
  for (Trans ta : kTrans) {
    for (Trans tb : kTrans) {
      for (const Shape& s : shapes) {
        for (int64_t pad : {0, 3}) {
          for (float beta : {0.0f, 1.0f}) {
            ExpectMatchesReference({ta, tb, s.M, s.N, s.K, pad, beta});
          }
        }
      }
    }
  }
}

// Every remainder of rows (up to two register tiles of 12) and of columns (up to 49: one and two
// vectors of 16 lanes, whole and partial) that the edge tiles handle.
TEST_P(GemmTest, EveryEdgeTile) {
  for (Trans ta : kTrans) {
    for (Trans tb : kTrans) {
      for (int64_t M = 1; M <= 25; ++M) {
        for (int64_t N : {1, 4, 8, 15, 16, 17, 31, 32, 33, 48, 49}) {
          ExpectMatchesReference({ta, tb, M, N, 5, 1, M % 2 == 0 ? 0.0f : 1.0f});
        }
      }
    }
  }
}

// The three products of a linear layer y = x W^T (x [T, in], W [out, in]) at reduced sizes, and
// reductions over 2048 and 256 products, with operands of one sign among them: where the tolerance
// is tightest.
TEST_P(GemmTest, LinearLayerProductsAndLongReductions) {
  const int64_t T = 150, in = 72, out = 88;
  ExpectMatchesReference({Trans::kN, Trans::kT, T, out, in, 0, 0.0f});  // y = x W^T
  ExpectMatchesReference({Trans::kN, Trans::kN, T, in, out, 0, 1.0f});  // dx += dy W
  ExpectMatchesReference({Trans::kT, Trans::kN, out, in, T, 0, 1.0f});  // dW += dy^T x
  for (Trans ta : kTrans) {
    for (Trans tb : kTrans) {
      ExpectMatchesReference({ta, tb, 24, 40, 2048, 1, 0.0f}, 7);
      ExpectMatchesReference({ta, tb, 24, 40, 2048, 1, 0.0f, /*same_sign=*/true}, 8);
      ExpectMatchesReference({ta, tb, 30, 20, 256, 0, 1.0f, /*same_sign=*/true}, 9);
    }
  }
}

TEST_P(GemmTest, EmptyShapes) {
  // M or N zero: nothing is written (C is all padding here).
  for (auto [M, N] : {std::pair<int64_t, int64_t>{0, 5}, {4, 0}}) {
    const Problem p{Trans::kN, Trans::kN, M, N, 3, 2, 0.0f};
    const Operands o = Make(p, 3);
    std::vector<float> got;
    RunSgemm(p, o, got);
    EXPECT_EQ(CountMismatches(p, o, got), 0) << p.Describe();
  }
  // K zero: C = beta * C, so beta 0 clears a NaN-filled C and beta 1 leaves it.
  for (float beta : {0.0f, 1.0f}) {
    const Problem p{Trans::kT, Trans::kN, 5, 6, 0, 2, beta};
    const Operands o = Make(p, 4);
    std::vector<float> got;
    RunSgemm(p, o, got);
    EXPECT_EQ(CountMismatches(p, o, got), 0) << p.Describe();
    for (int64_t m = 0; m < p.M; ++m) {
      for (int64_t n = 0; n < p.N; ++n) {
        const int64_t i = m * o.ldc + n;
        EXPECT_EQ(got[i], beta == 0 ? 0.0f : o.c[i]) << p.Describe() << " " << m << " " << n;
      }
    }
  }
}

TEST_P(GemmTest, OtherBetaScalesC) {
  ExpectMatchesReference({Trans::kN, Trans::kT, 30, 41, 57, 1, 0.5f});
  ExpectMatchesReference({Trans::kT, Trans::kT, 19, 33, 300, 0, -2.0f});
}

// Large enough to be split across threads (more than 2^18 multiply-adds). Every element must come
// out bit for bit the same with 1, 2 or 3 threads, and when the output is computed in separate
// calls by row or column ranges that cut through register tiles.
TEST_P(GemmTest, BitIdenticalForAnyThreadCountAndSplit) {
  for (Trans ta : kTrans) {
    for (Trans tb : kTrans) {
      for (float beta : {0.0f, 1.0f}) {
        const Problem p{ta, tb, 203, 150, 600, 5, beta};
        const Operands o = Make(p, 9);
        std::vector<float> one, many;
        SetNumThreads(1);
        RunSgemm(p, o, one);
        for (int threads : {2, 3}) {
          SetNumThreads(threads);
          RunSgemm(p, o, many);
          EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0)
              << p.Describe() << " threads=" << threads;
        }
        SetNumThreads(2);
        // Rows [0, 77) and [77, M) in two calls.
        std::vector<float> split = o.c;
        for (auto [m0, m1] : {std::pair<int64_t, int64_t>{0, 77}, {77, p.M}}) {
          const float* a = ta == Trans::kN ? o.a.data() + m0 * o.lda : o.a.data() + m0;
          Sgemm(ta, tb, m1 - m0, p.N, p.K, a, o.lda, o.b.data(), o.ldb, p.beta,
                split.data() + m0 * o.ldc, o.ldc);
        }
        EXPECT_EQ(std::memcmp(one.data(), split.data(), one.size() * sizeof(float)), 0)
            << p.Describe() << " split by rows";
        // Columns [0, 61) and [61, N) in two calls.
        split = o.c;
        for (auto [n0, n1] : {std::pair<int64_t, int64_t>{0, 61}, {61, p.N}}) {
          const float* b = tb == Trans::kN ? o.b.data() + n0 : o.b.data() + n0 * o.ldb;
          Sgemm(ta, tb, p.M, n1 - n0, p.K, o.a.data(), o.lda, b, o.ldb, p.beta, split.data() + n0,
                o.ldc);
        }
        EXPECT_EQ(std::memcmp(one.data(), split.data(), one.size() * sizeof(float)), 0)
            << p.Describe() << " split by columns";
        EXPECT_EQ(CountMismatches(p, o, one), 0) << p.Describe();
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, GemmTest, ::testing::ValuesIn(AvailableTargets()),
                         [](const auto& info) { return info.param; });

// The x86 targets with FMA compute every element in the same sequence of operations (see gemm.h),
// so they agree bit for bit whatever their register tiles.
TEST(Gemm, FmaTargetsAgreeBitForBit) {
  std::vector<std::string> fma;
  for (const std::string& t : AvailableTargets()) {
    if (t == "AVX2" || t.rfind("AVX3", 0) == 0) fma.push_back(t);
  }
  if (fma.size() < 2) GTEST_SKIP() << "fewer than two FMA targets on this CPU";
  for (Trans ta : kTrans) {
    for (Trans tb : kTrans) {
      const Problem p{ta, tb, 53, 71, 700, 2, 1.0f};
      const Operands o = Make(p, 13);
      std::vector<float> first, got;
      for (const std::string& t : fma) {
        ASSERT_TRUE(ForceTarget(t));
        RunSgemm(p, o, t == fma[0] ? first : got);
        if (t != fma[0]) {
          EXPECT_EQ(std::memcmp(first.data(), got.data(), got.size() * sizeof(float)), 0)
              << p.Describe() << ": " << fma[0] << " vs " << t;
        }
      }
      ForceTarget("");
    }
  }
}

// The reference against products worked out by hand, in all four storage orders:
// op(A) = [[1, 2, 3], [4, 5, 6]], op(B) = [[1, 0], [0, 2], [-1, 1]]: op(A) op(B) = [[-2, 7],
// [-2, 16]].
TEST(GemmReference, MatchesHandComputedProduct) {
  const float a_n[] = {1, 2, 3, 4, 5, 6}, a_t[] = {1, 4, 2, 5, 3, 6};
  const float b_n[] = {1, 0, 0, 2, -1, 1}, b_t[] = {1, 0, -1, 0, 2, 1};
  for (Trans ta : kTrans) {
    for (Trans tb : kTrans) {
      const float* a = ta == Trans::kN ? a_n : a_t;
      const float* b = tb == Trans::kN ? b_n : b_t;
      const int64_t lda = ta == Trans::kN ? 3 : 2, ldb = tb == Trans::kN ? 2 : 3;
      float c[] = {NAN, NAN, NAN, NAN};
      reference::Sgemm(ta, tb, 2, 2, 3, a, lda, b, ldb, 0, c, 2);
      EXPECT_EQ(std::vector<float>(c, c + 4), (std::vector<float>{-2, 7, -2, 16}));
      float acc[] = {10, 20, 30, 40};
      reference::Sgemm(ta, tb, 2, 2, 3, a, lda, b, ldb, 1, acc, 2);
      EXPECT_EQ(std::vector<float>(acc, acc + 4), (std::vector<float>{8, 27, 28, 56}));
    }
  }
}

// The checker used above rejects what a broken kernel would produce.
TEST(GemmReference, CheckerCatchesWrongResults) {
  const Problem p{Trans::kN, Trans::kN, 40, 40, 40, 2, 0.0f};
  const Operands o = Make(p, 5);
  std::vector<float> got;
  RunSgemm(p, o, got);
  ASSERT_EQ(CountMismatches(p, o, got), 0);
  // One element off by 1e-4 of its value.
  std::vector<float> bad = got;
  bad[3 * o.ldc + 7] *= 1.0001f;
  EXPECT_EQ(CountMismatches(p, o, bad), 1);
  // A NaN left in C.
  bad = got;
  bad[5] = NAN;
  EXPECT_EQ(CountMismatches(p, o, bad), 1);
  // A write into the padding of a row.
  bad = got;
  bad[o.ldc - 1] = 0;
  EXPECT_EQ(CountMismatches(p, o, bad), 1);
  // The wrong transposition of A (square, so the shapes agree).
  Problem wrong = p;
  wrong.ta = Trans::kT;
  RunSgemm(wrong, o, bad);
  EXPECT_GT(CountMismatches(p, o, bad), 1000);
  // Accumulating instead of overwriting (C starts as NaN: every element is wrong).
  Problem acc = p;
  acc.beta = 1.0f;
  RunSgemm(acc, o, bad);
  EXPECT_EQ(CountMismatches(p, o, bad), p.M * p.N);
}

}  // namespace
}  // namespace dsv3::kernels
