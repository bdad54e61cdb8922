// Every dispatched kernel against its plain reference (kernels/reference.cc), on every SIMD target
// this CPU supports. Tolerances are relative to the magnitude of the terms summed: float32
// accumulation in a different order than the double-precision reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <string_view>

#include "core/aligned.h"
#include "core/dtype.h"
#include "kernels/amx.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/targets.h"
#include "tests/kernels_reference.h"

namespace dsv3::kernels {
namespace {

constexpr float kRelTol = 2e-6f;  // of sum |w_i x_i|

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// A weight matrix in one dtype with its backing storage.
struct TestMatrix {
  WeightMatrix w;
  std::vector<uint8_t> data;
  std::vector<float> scale;
};

TestMatrix MakeMatrix(DType dtype, int64_t rows, int64_t cols, uint32_t seed, int64_t block = 128) {
  TestMatrix m;
  const std::vector<float> v = Random(rows * cols, seed, 0.5f);
  m.data.resize(rows * cols * DTypeSize(dtype));
  for (int64_t i = 0; i < rows * cols; ++i) {
    switch (dtype) {
      case DType::kF32:
        std::memcpy(&m.data[4 * i], &v[i], 4);
        break;
      case DType::kBF16:
        reinterpret_cast<uint16_t*>(m.data.data())[i] = F32ToBF16(v[i]);
        break;
      case DType::kF16:
        reinterpret_cast<uint16_t*>(m.data.data())[i] = F32ToF16(v[i]);
        break;
      case DType::kF8E4M3:
        m.data[i] = F32ToE4M3(v[i] * 100);
        break;
      default:
        break;
    }
  }
  m.w = {dtype, rows, cols, m.data.data(), nullptr, 0, 0, 0};
  if (dtype == DType::kF8E4M3) {
    const int64_t sr = (rows + block - 1) / block, sc = (cols + block - 1) / block;
    m.scale = Random(sr * sc, seed + 1, 0.01f);
    for (float& s : m.scale) s = std::fabs(s) + 1e-3f;
    m.w.scale = m.scale.data();
    m.w.block_rows = block;
    m.w.block_cols = block;
    m.w.scale_cols = sc;
  }
  return m;
}

// |sum| bound for the error of row r against x.
float Magnitude(const WeightMatrix& w, int64_t r, const float* x) {
  double s = 0;
  for (int64_t c = 0; c < w.cols; ++c) s += std::fabs(reference::WeightAt(w, r, c) * x[c]);
  return static_cast<float>(s);
}

// MatMul(w, x) for T tokens against the reference product of w and x_ref (x itself, or what the
// kernel should have made of it), within float32 accumulation.
void ExpectMatMulMatchesReference(const TestMatrix& m, const std::vector<float>& x,
                                  const std::vector<float>& x_ref, int64_t T,
                                  const MatMulOptions& options = {}) {
  const int64_t rows = m.w.rows, cols = m.w.cols;
  std::vector<float> got(T * rows), want(T * rows);
  MatMul(m.w, x.data(), cols, T, got.data(), rows, options);
  reference::MatMul(m.w, x_ref.data(), cols, T, want.data(), rows);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      const float tol = kRelTol * Magnitude(m.w, r, x_ref.data() + t * cols) + 1e-30f;
      ASSERT_NEAR(got[t * rows + r], want[t * rows + r], tol)
          << DTypeName(m.w.dtype) << " " << rows << "x" << cols << " T=" << T << " t=" << t
          << " r=" << r;
    }
  }
}

// A target, or "<target>_F16": AVX3 / AMX with the FP8 decode path's byte tables switched off, so
// that its float16 route (the one of AVX-512 CPUs without VBMI) is covered on CPUs that have them.
constexpr std::string_view kF16Suffix = "_F16";

std::string TargetOf(const std::string& param) {
  const size_t at = param.find(kF16Suffix);
  return at == std::string::npos ? param : param.substr(0, at);
}

std::vector<std::string> Variants() {
  std::vector<std::string> v;
  for (const std::string& t : AvailableTargets()) {
    v.push_back(t);
    if (Fp8LookupEnabled() && (t == "AVX3" || t == "AMX")) v.push_back(t + std::string(kF16Suffix));
  }
  return v;
}

class KernelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(ForceTarget(TargetOf(GetParam())));
    SetFp8LookupEnabled(TargetOf(GetParam()) == GetParam());
  }
  void TearDown() override {
    ForceTarget("");
    SetFp8LookupEnabled(true);
  }
};

TEST_P(KernelTest, ActiveTargetIsTheForcedOne) { EXPECT_EQ(ActiveTarget(), TargetOf(GetParam())); }

TEST_P(KernelTest, MatMulAllDtypesShapesAndBatches) {
  // 200 x 300 with 128 blocks: a partial last block row (72) and column (44) of FP8 scales;
  // 9 x 320: a last column block of 64 and a row left over after groups of 4 (the byte-table
  // route of AVX3 takes column blocks in groups of 64).
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
    for (auto [rows, cols] :
         {std::pair<int64_t, int64_t>{200, 300}, {7, 1030}, {5, 3}, {64, 128}, {9, 320}}) {
      const TestMatrix m = MakeMatrix(dtype, rows, cols, 11);
      for (int64_t T : {1, 3, 40}) {
        const std::vector<float> x = Random(T * cols, 5);
        ExpectMatMulMatchesReference(m, x, x, T);
      }
    }
  }
}

// The FP8 decode path converts in registers (through float16 on AVX2 and better; by byte table
// lookups on AVX3 with VBMI), not with the float table: every code, NaNs included, must come out
// exactly, in the 4-row and the 1-row kernels.
TEST_P(KernelTest, Fp8DecodePathHasEveryCodeExact) {
  const int64_t rows = 5, cols = 256;
  std::vector<uint8_t> codes(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c)
      codes[r * cols + c] = static_cast<uint8_t>((c + 37 * r) % 256);
  }
  const std::vector<float> scale = {1.0f, 1.0f};
  const WeightMatrix w{DType::kF8E4M3, rows, cols, codes.data(), scale.data(), 128, 128, 2};
  // Every row holds the NaN codes 0x7F and 0xFF somewhere: whatever x is, the products are NaN.
  std::vector<float> x(cols, 0.0f), y(rows);
  x[3] = 1.0f;
  MatMul(w, x.data(), cols, 1, y.data(), rows);
  for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(std::isnan(y[r])) << "row " << r;
  x[3] = 0.0f;
  // Rows without NaN codes: every finite code exactly.
  std::vector<uint8_t> finite(4 * cols);
  for (int64_t i = 0; i < 4 * cols; ++i) {
    const uint8_t code = static_cast<uint8_t>(i % 256);
    finite[i] = (code & 0x7F) == 0x7F ? 0 : code;
  }
  const WeightMatrix f{DType::kF8E4M3, 4, cols, finite.data(), scale.data(), 128, 128, 2};
  std::vector<float> y4(4);
  for (int64_t k = 0; k < cols; ++k) {
    x[k] = 1.0f;
    MatMul(f, x.data(), cols, 1, y4.data(), 4);
    for (int64_t r = 0; r < 4; ++r) {
      ASSERT_EQ(y4[r], E4M3ToF32(finite[r * cols + k])) << "code " << int(finite[r * cols + k]);
    }
    x[k] = 0.0f;
  }
}

// Below kGemmMinTokens a call with several tokens must give each token exactly (bit for bit) what
// a one-token call gives: speculative verification relies on it to reproduce plain decoding.
TEST_P(KernelTest, FewTokensAreBitIdenticalToOneToken) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{70, 256}, {9, 384}, {13, 300}}) {
      const TestMatrix m = MakeMatrix(dtype, rows, cols, 17);
      for (int64_t T = 2; T < kGemmMinTokens; ++T) {
        const std::vector<float> x = Random(T * cols, 23);
        std::vector<float> batched(T * rows), single(rows);
        MatMul(m.w, x.data(), cols, T, batched.data(), rows);
        for (int64_t t = 0; t < T; ++t) {
          MatMul(m.w, x.data() + t * cols, cols, 1, single.data(), rows);
          for (int64_t r = 0; r < rows; ++r) {
            ASSERT_EQ(BitsFromF32(batched[t * rows + r]), BitsFromF32(single[r]))
                << DTypeName(dtype) << " " << rows << "x" << cols << " T=" << T << " t=" << t
                << " r=" << r;
          }
        }
      }
    }
  }
}

TEST_P(KernelTest, MatMulRowsWritesOnlyItsSlice) {
  const TestMatrix m = MakeMatrix(DType::kF8E4M3, 300, 256, 3);
  const std::vector<float> x = Random(2 * 256, 9);
  std::vector<float> want(2 * 300);
  reference::MatMul(m.w, x.data(), 256, 2, want.data(), 300);
  std::vector<float> got(2 * 50, -7.0f);
  MatMulRows(m.w, 130, 170, x.data(), 256, 2, got.data(), 50);  // rows 130..169 -> columns 0..39
  for (int t = 0; t < 2; ++t) {
    for (int i = 0; i < 40; ++i) {
      EXPECT_NEAR(got[t * 50 + i], want[t * 300 + 130 + i],
                  kRelTol * Magnitude(m.w, 130 + i, x.data() + t * 256));
    }
    for (int i = 40; i < 50; ++i) EXPECT_EQ(got[t * 50 + i], -7.0f);
  }
}

TEST_P(KernelTest, TransposedRowsAndDequant) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
    const TestMatrix m = MakeMatrix(dtype, 160, 300, 21);
    const std::vector<float> x = Random(42, 4);  // ten groups of four rows and two more
    std::vector<float> got = Random(300, 8), want = got;
    MatVecTransposedRows(m.w, 100, 142, x.data(), got.data());
    reference::MatVecTransposedRows(m.w, 100, 142, x.data(), want.data());
    for (int c = 0; c < 300; ++c) {
      double mag = std::fabs(want[c]);
      for (int r = 0; r < 42; ++r) mag += std::fabs(reference::WeightAt(m.w, 100 + r, c) * x[r]);
      ASSERT_NEAR(got[c], want[c], kRelTol * mag) << DTypeName(dtype) << " c=" << c;
    }
    std::vector<float> row(300);
    DequantRow(m.w, 150, row.data());
    for (int c = 0; c < 300; ++c) ASSERT_EQ(row[c], reference::WeightAt(m.w, 150, c)) << c;
  }
}

TEST_P(KernelTest, VectorOps) {
  for (int64_t n : {1, 7, 16, 100, 576, 1031}) {
    const std::vector<float> a = Random(n, 1), b = Random(n, 2), w = Random(n, 3);
    double mag = 0;
    for (int64_t i = 0; i < n; ++i) mag += std::fabs(a[i] * b[i]);
    EXPECT_NEAR(Dot(a.data(), b.data(), n), reference::Dot(a.data(), b.data(), n), kRelTol * mag);

    std::vector<float> got(n), want(n);
    RmsNorm(a.data(), w.data(), 1e-6f, n, got.data());
    reference::RmsNorm(a.data(), w.data(), 1e-6f, n, want.data());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5f * (1 + std::fabs(want[i]))) << n;

    got = a;
    want = a;
    for (float& v : got) v *= 10;
    for (float& v : want) v *= 10;
    Softmax(got.data(), n);
    reference::Softmax(want.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(got[i], want[i], 2e-6f * (1 + want[i] * n)) << n;

    SiluMul(a.data(), b.data(), got.data(), n);
    reference::SiluMul(a.data(), b.data(), want.data(), n);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5f * (1 + std::fabs(want[i]))) << n;

    got = b;
    Axpy(0.5f, a.data(), got.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(got[i], b[i] + 0.5f * a[i]);
    got = b;
    Add(a.data(), got.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(got[i], b[i] + a[i]);

    std::vector<uint16_t> h(n);
    for (int64_t i = 0; i < n; ++i) h[i] = F32ToBF16(a[i] * 1e30f);
    if (n > 3) h[1] = 0x7F80, h[2] = 0x0001, h[3] = 0xFFC1;  // inf, a subnormal, a NaN
    BF16ToF32(h.data(), n, got.data());
    for (int64_t i = 0; i < n; ++i) {
      const float e = dsv3::BF16ToF32(h[i]);
      ASSERT_EQ(std::memcmp(&got[i], &e, 4), 0) << i;  // bit for bit
    }
  }
}

// The AMX absorbed-attention kernel over BF16 rows against a double-precision softmax-weighted sum
// of the same values (the rows' BF16 values, the float32 queries), for head counts, widths and
// row counts that leave partial tiles everywhere, in one call and resumed in a second call.
// Tolerance: queries and probabilities enter in two BF16 parts (relative error <= 2^-17), so a
// score may be off by 2^-17 * scale * sum_i |q_i c_i| (ds below) and the output by that plus
// 2^-17, relative to the magnitude of its terms; float32 accumulation adds ~1e-6.
// With MatMulPrecision::kBF16 the AMX products take each activation rounded to BF16 (to nearest
// even) once: against the reference on the rounded activations, within float32 accumulation (the
// exact float32 product would be ~2^-9 away and fail). 200 tokens: two activation passes.
TEST(Kernels, AmxBf16PrecisionRoundsActivationsOnce) {
  if (!AmxSupported()) GTEST_SKIP() << "no AMX on this CPU";
  ASSERT_TRUE(ForceTarget("AMX"));
  for (DType dtype : {DType::kBF16, DType::kF8E4M3}) {
    for (auto [rows, cols] :
         {std::pair<int64_t, int64_t>{200, 300}, {64, 128}, {40, 2048}, {17, 4352}}) {
      const TestMatrix m = MakeMatrix(dtype, rows, cols, 29);
      for (int64_t T : {kGemmMinTokens, int64_t{40}, int64_t{200}}) {
        const std::vector<float> x = Random(T * cols, 31);
        std::vector<float> rounded(x.size());
        for (size_t i = 0; i < x.size(); ++i) rounded[i] = dsv3::BF16ToF32(F32ToBF16(x[i]));
        ExpectMatMulMatchesReference(m, x, rounded, T, {.precision = MatMulPrecision::kBF16});
      }
    }
  }
  ForceTarget("");
}

// The AMX conversion of FP8 rows: a fast path for blocks of 64 codes that are all normal, the
// exact general one otherwise. Rows of only normal codes (each of the 238 in turn) and rows of
// every finite code, against the reference: a wrong code would be far outside the tolerance.
TEST(Kernels, AmxFp8EveryCodeExact) {
  if (!AmxSupported()) GTEST_SKIP() << "no AMX on this CPU";
  ASSERT_TRUE(ForceTarget("AMX"));
  const int64_t rows = 64, cols = 448, T = 20;
  std::vector<uint8_t> normal, finite;
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;
    finite.push_back(static_cast<uint8_t>(code));
    if ((code & 0x7F) >= 8) normal.push_back(static_cast<uint8_t>(code));
  }
  TestMatrix m = MakeMatrix(DType::kF8E4M3, rows, cols, 3);
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<uint8_t>& pool = r < rows / 2 ? normal : finite;
    for (int64_t c = 0; c < cols; ++c) m.data[r * cols + c] = pool[(c + 41 * r) % pool.size()];
  }
  const std::vector<float> x = Random(T * cols, 9);
  ExpectMatMulMatchesReference(m, x, x, T);
  ForceTarget("");
}

// Both precisions: two BF16 parts of the queries and probabilities (error ~2^-17 of the terms),
// or one (MatMulPrecision::kBF16, ~2^-9; its error must then exceed what two parts allow).
TEST(Kernels, AmxLatentAttentionMatchesPlainSoftmax) {
  if (!AmxSupported()) GTEST_SKIP() << "no AMX on this CPU";
  struct Shape {
    int64_t H, W, C;
  };
  for (const MatMulPrecision precision : {MatMulPrecision::kF32, MatMulPrecision::kBF16}) {
    const int e = precision == MatMulPrecision::kF32 ? -17 : -8;
    for (const Shape& s : {Shape{16, 576, 512}, Shape{4, 80, 64}, Shape{8, 112, 96},
                           Shape{20, 96, 64}, Shape{128, 576, 512}}) {
      double worst_two_part = 0;  // largest output error / the two-part bound
      ASSERT_TRUE(AmxLatentAttentionSupported(s.H, s.W, s.C));
      const int64_t Hp = (s.H + 15) / 16 * 16;
      std::vector<uint16_t> tiles(AmxLatentQueryElements(s.H, s.W));
      AlignedArray<uint8_t> scratch(static_cast<size_t>(AmxLatentScratchBytes(s.W, s.C)));
      for (int64_t n : {1, 31, 33, 100, 300}) {
        const std::vector<float> q = Random(s.H * s.W, 7 + n);
        const std::vector<float> r = Random(n * s.W, 11 + n);
        std::vector<uint16_t> rows(n * s.W);
        for (size_t i = 0; i < rows.size(); ++i) rows[i] = F32ToBF16(r[i]);
        const float scale = 0.1f;
        AmxPrepareLatentQueries(q.data(), s.H, s.W, tiles.data());
        for (int64_t split : {n, n / 2}) {
          const int64_t os = s.C + 16;
          std::vector<float> m(Hp, -INFINITY), l(Hp, 0.0f), o(Hp * os, 0.0f);
          AmxLatentAttention(tiles.data(), s.H, s.W, s.C, rows.data(), split, scale, m.data(),
                             l.data(), o.data(), os, scratch.data(), precision);
          if (split < n) {
            AmxLatentAttention(tiles.data(), s.H, s.W, s.C, rows.data() + split * s.W, n - split,
                               scale, m.data(), l.data(), o.data(), os, scratch.data(), precision);
          }
          for (int64_t h = 0; h < s.H; ++h) {
            std::vector<double> p(n);
            double mx = -INFINITY, sum = 0, ds = 0, ds2 = 0;
            for (int64_t k = 0; k < n; ++k) {
              double d = 0, a = 0;
              for (int64_t i = 0; i < s.W; ++i) {
                d += double{q[h * s.W + i]} * dsv3::BF16ToF32(rows[k * s.W + i]);
                a += std::fabs(double{q[h * s.W + i]} * dsv3::BF16ToF32(rows[k * s.W + i]));
              }
              p[k] = d * scale;
              mx = std::max(mx, p[k]);
              ds = std::max(ds, std::ldexp(a * scale, e));
              ds2 = std::max(ds2, std::ldexp(a * scale, -17));
            }
            for (double& v : p) sum += v = std::exp(v - mx);
            ASSERT_NEAR(m[h], mx, ds + 1e-6 * (1 + std::fabs(mx))) << s.H << " " << s.W << " " << n;
            ASSERT_NEAR(l[h], sum, (2 * ds + 1e-6) * sum) << s.H << " " << s.W << " " << n;
            for (int64_t j = 0; j < s.C; ++j) {
              double want = 0, mag = 0;
              for (int64_t k = 0; k < n; ++k) {
                want += p[k] * dsv3::BF16ToF32(rows[k * s.W + j]);
                mag += p[k] * std::fabs(dsv3::BF16ToF32(rows[k * s.W + j]));
              }
              const double err = std::fabs(o[h * os + j] / l[h] - want / sum);
              ASSERT_LE(err, (2 * ds + std::ldexp(1.0, e) + 1e-6) * (1 + mag / sum))
                  << MatMulPrecisionName(precision) << " H " << s.H << " W " << s.W << " n " << n
                  << " split " << split << " head " << h << " column " << j;
              worst_two_part =
                  std::max(worst_two_part,
                           err / ((2 * ds2 + std::ldexp(1.0, -17) + 1e-6) * (1 + mag / sum)));
            }
          }
        }
      }
      if (precision == MatMulPrecision::kBF16) {
        EXPECT_GT(worst_two_part, 1) << s.H << " " << s.W;
      }
    }
  }
}

// Blocked attention: scores, online softmax over several blocks, weighted values, against a
// plain softmax-weighted sum.
TEST_P(KernelTest, BlockedAttentionMatchesPlainSoftmax) {
  const int64_t nq = 6, nk = 45, d = 40, dv = 150, block = 16;
  const std::vector<float> Q = Random(nq * d, 1), K = Random(nk * 48, 2), V = Random(nk * 160, 3);
  std::vector<float> want(nq * dv, 0.0f);
  for (int64_t q = 0; q < nq; ++q) {
    std::vector<float> p(nk);
    for (int64_t k = 0; k < nk; ++k) p[k] = reference::Dot(&Q[q * d], &K[k * 48], d) * 0.3f;
    reference::Softmax(p.data(), nk);
    for (int64_t k = 0; k < nk; ++k) {
      for (int64_t j = 0; j < dv; ++j) want[q * dv + j] += p[k] * V[k * 160 + j];
    }
  }
  std::vector<float> o(nq * dv, 0.0f), m(nq, -INFINITY), l(nq, 0.0f), scores(nq * block);
  for (int64_t k0 = 0; k0 < nk; k0 += block) {
    const int64_t nb = std::min(block, nk - k0);
    QKScores(Q.data(), d, nq, &K[k0 * 48], 48, nb, d, 0.3f, scores.data());
    for (int64_t q = 0; q < nq; ++q) {
      for (int64_t k = 0; k < nb; ++k) {
        ASSERT_NEAR(scores[q * nb + k], reference::Dot(&Q[q * d], &K[(k0 + k) * 48], d) * 0.3f,
                    1e-5f);
      }
      const float correction = OnlineSoftmax(&scores[q * nb], nb, m[q], l[q]);
      Scale(correction, &o[q * dv], dv);
    }
    PVAccumulate(scores.data(), nq, nb, &V[k0 * 160], 160, dv, o.data(), dv);
  }
  for (int64_t q = 0; q < nq; ++q) {
    for (int64_t j = 0; j < dv; ++j) ASSERT_NEAR(o[q * dv + j] / l[q], want[q * dv + j], 1e-5f);
  }
  // Fully masked blocks contribute nothing.
  float masked[3] = {-INFINITY, -INFINITY, -INFINITY}, mm = -INFINITY, ll = 0;
  EXPECT_EQ(OnlineSoftmax(masked, 3, mm, ll), 1.0f);
  EXPECT_EQ(ll, 0.0f);
  EXPECT_EQ(masked[1], 0.0f);
}

TEST_P(KernelTest, SiluAndSoftmaxExtremes) {
  const float gate[4] = {-100, 100, 0, -1e-30f}, up[4] = {1, 2, 3, 4};
  float out[4];
  SiluMul(gate, up, out, 4);
  EXPECT_NEAR(out[0], 0, 1e-30);
  EXPECT_FLOAT_EQ(out[1], 200);
  EXPECT_EQ(out[2], 0);
  float big[3] = {1000, 1000, -1000};
  Softmax(big, 3);
  EXPECT_FLOAT_EQ(big[0], 0.5f);
  EXPECT_FLOAT_EQ(big[1], 0.5f);
  EXPECT_EQ(big[2], 0);
}

INSTANTIATE_TEST_SUITE_P(Targets, KernelTest, ::testing::ValuesIn(Variants()),
                         [](const auto& info) { return info.param; });

// The FP8 copy of a weight matrix (the --lm-head fp8 head) against a plain reference: per 128 x 128
// block (partial ones at the edges) scale = amax / 448, 1 where that is zero (a block all zero,
// or, in float32, one whose amax / 448 underflows), and every code F32ToE4M3(value / scale); the
// product of the copy then runs on the FP8 kernels.
TEST(Kernels, QuantizeFp8BlocksMatchesReference) {
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    TestMatrix m = MakeMatrix(dtype, 300, 200, 41);
    // Block (1, 1) all zero.
    for (int64_t r = 128; r < 256; ++r) {
      for (int64_t c = 128; c < 200; ++c) {
        const size_t i = static_cast<size_t>(r * 200 + c) * DTypeSize(dtype);
        std::memset(&m.data[i], 0, DTypeSize(dtype));
      }
    }
    if (dtype == DType::kF32) {  // block (2, 0): a single float32 subnormal, amax / 448 == 0
      for (int64_t r = 256; r < 300; ++r) {
        for (int64_t c = 0; c < 128; ++c) {
          const float v = r == 256 && c == 0 ? 1e-44f : 0.0f;
          std::memcpy(&m.data[static_cast<size_t>(r * 200 + c) * 4], &v, 4);
        }
      }
    }
    const std::unique_ptr<Fp8Weights> q = QuantizeFp8Blocks(m.w);
    const WeightMatrix& f = q->matrix;
    ASSERT_EQ(f.dtype, DType::kF8E4M3);
    ASSERT_EQ(f.rows, 300);
    ASSERT_EQ(f.cols, 200);
    ASSERT_EQ(f.scale_cols, 2);
    ASSERT_EQ(q->scales.size(), 6u);
    for (int64_t br = 0; br < 3; ++br) {
      for (int64_t bc = 0; bc < 2; ++bc) {
        float amax = 0;
        for (int64_t r = 128 * br; r < std::min<int64_t>(300, 128 * (br + 1)); ++r) {
          for (int64_t c = 128 * bc; c < std::min<int64_t>(200, 128 * (bc + 1)); ++c)
            amax = std::max(amax, std::fabs(reference::WeightAt(m.w, r, c)));
        }
        const float scale = amax / 448.0f == 0 ? 1.0f : amax / 448.0f;
        if ((br == 1 && bc == 1) || (dtype == DType::kF32 && br == 2 && bc == 0)) {
          EXPECT_EQ(scale, 1.0f);
        }
        ASSERT_EQ(q->scales[br * 2 + bc], scale) << br << "," << bc;
        for (int64_t r = 128 * br; r < std::min<int64_t>(300, 128 * (br + 1)); ++r) {
          for (int64_t c = 128 * bc; c < std::min<int64_t>(200, 128 * (bc + 1)); ++c) {
            ASSERT_EQ(q->codes[r * 200 + c], F32ToE4M3(reference::WeightAt(m.w, r, c) / scale))
                << DTypeName(dtype) << " " << r << "," << c;
          }
        }
      }
    }
    const std::vector<float> x = Random(200, 9);
    ExpectMatMulMatchesReference({f, {}, {}}, x, x, 1);
  }
}

TEST(Kernels, RopeRotatesAdjacentPairs) {
  std::vector<float> x = {1, 2, 3, 4};
  const float cos[2] = {0, 1}, sin[2] = {1, 0};  // 90 degrees, then 0
  RopeInterleaved(x.data(), cos, sin, 2);
  EXPECT_EQ(x, (std::vector<float>{-2, 1, 3, 4}));
  std::vector<float> a = Random(64, 3), b = a;
  const std::vector<float> c = Random(32, 4), s = Random(32, 5);
  RopeInterleaved(a.data(), c.data(), s.data(), 32);
  reference::RopeInterleaved(b.data(), c.data(), s.data(), 32);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(a[i], b[i], 1e-6f);
}

TEST(Kernels, TopKBreaksTiesTowardTheLowerIndex) {
  const float s[8] = {1, 3, 3, 2, 3, -1, 2, 0};
  int32_t idx[4];
  TopK(s, 8, 4, idx);
  EXPECT_EQ(std::vector<int32_t>(idx, idx + 4), (std::vector<int32_t>{1, 2, 4, 3}));
  const float equal[5] = {0, 0, 0, 0, 0};
  TopK(equal, 5, 3, idx);
  EXPECT_EQ(std::vector<int32_t>(idx, idx + 3), (std::vector<int32_t>{0, 1, 2}));
  const std::vector<float> r = Random(300, 6);
  std::vector<int32_t> got(20), want(20);
  TopK(r.data(), 300, 20, got.data());
  reference::TopK(r.data(), 300, 20, want.data());
  EXPECT_EQ(got, want);
  TopK(s, 8, 20, got.data());  // k > n: all of them
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + 8),
            (std::vector<int32_t>{1, 2, 4, 3, 6, 0, 7, 5}));
}

}  // namespace
}  // namespace dsv3::kernels
