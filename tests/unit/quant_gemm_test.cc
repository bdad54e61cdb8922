// Tests of the FP8 / BF16 training products (kernels/quant_gemm.h) on every compiled SIMD target
// (and on AVX3 with vdpbf16ps switched off): the quantizers bit-exact against the plain references
// of tests/kernels_reference.h (which are checked against core/dtype.h's conversions), Bf16Gemm
// within 1e-6 of sum |beta C| + sum_k |sa sb a b| of a double reference, thread-count
// independence, and the end-to-end error of FP8 linear-layer products against float32.
#include "kernels/quant_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "kernels/targets.h"
#include "tests/kernels_reference.h"

namespace dsv3::kernels {
namespace {

constexpr int64_t kT = kQuantTile;
constexpr uint16_t kSentinel = 0xABCD;  // in q beyond the padded width: must stay
constexpr uint16_t kBf16Of448 = 0x43E0;

int64_t Pad(int64_t n) { return (n + kT - 1) / kT * kT; }
int64_t Tiles(int64_t n) { return (n + kT - 1) / kT; }

std::vector<float> Normal(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

std::vector<uint16_t> ToBf16Vector(const std::vector<float>& x) {
  std::vector<uint16_t> q(x.size());
  for (size_t i = 0; i < x.size(); ++i) q[i] = F32ToBF16(x[i]);
  return q;
}

// Quantizer input x [rows, cols] (ldx): normal values with a magnitude that changes per row
// (2^-24 .. 2^24), and the cases that need care: an all-zero tile, an all-zero row, a row of
// float32 subnormals whose amax / 448 underflows (scale 1), one of larger subnormals (a subnormal
// scale), exact zeros and negative zeros scattered in.
std::vector<float> QuantInput(int64_t rows, int64_t cols, int64_t ldx, uint32_t seed) {
  std::vector<float> x = Normal(rows * ldx, seed);
  std::mt19937 rng(seed + 1);
  for (int64_t r = 0; r < rows; ++r) {
    int exponent = static_cast<int>(rng() % 49) - 24;
    if (r % 7 == 3) exponent = -146;  // amax ~ 2^-144: amax / 448 underflows to zero
    if (r % 7 == 4) exponent = -128;  // amax / 448 is a float32 subnormal
    for (int64_t c = 0; c < cols; ++c) {
      float& v = x[r * ldx + c];
      v = std::ldexp(v, exponent);
      if (rng() % 17 == 0) v = 0.0f;
      if (rng() % 19 == 0) v = -0.0f;
      if (r % 7 == 1 && c < kT) v = 0.0f;  // a zero tile
      if (r % 7 == 2) v = 0.0f;            // a zero row
    }
  }
  return x;
}

// The transpose of x [rows, cols] (ldx) as [cols, rows].
std::vector<float> Transpose(const std::vector<float>& x, int64_t rows, int64_t cols, int64_t ldx) {
  std::vector<float> t(cols * rows);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = x[r * ldx + c];
  }
  return t;
}

// q [rows, width] (ldq) equals want [rows, cols] in the first cols columns, is zero up to width
// and kSentinel beyond.
void ExpectCodes(const std::vector<uint16_t>& q, int64_t ldq, const std::vector<uint16_t>& want,
                 int64_t rows, int64_t cols, int64_t width, const std::string& what) {
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < ldq; ++c) {
      const uint16_t expected = c < cols ? want[r * cols + c] : c < width ? 0 : kSentinel;
      if (q[r * ldq + c] != expected && bad++ < 5) {
        ADD_FAILURE() << what << " [" << r << "][" << c << "]: " << std::hex << q[r * ldq + c]
                      << " != " << expected;
      }
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

void ExpectScales(const float* got, const std::vector<float>& want, const std::string& what) {
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(BitsFromF32(got[i]), BitsFromF32(want[i])) << what << " scale " << i;
  }
}

const std::vector<std::pair<int64_t, int64_t>> kQuantShapes = {
    {1, 1}, {3, 128}, {5, 129}, {9, 300}, {130, 72}, {257, 256}, {128, 200}};

// ---- the references against core/dtype.h -----------------------------------------------------

// E4M3Round (a search over the E4M3 values) and dsv3::F32ToE4M3 (bit manipulation) agree on
// every E4M3 value, each midpoint between neighbours (the ties), the floats next to those, values
// beyond 448 and random magnitudes: both round to nearest even and saturate alike.
TEST(QuantGemmReference, E4M3RoundingAgreesWithDtype) {
  std::vector<float> ys;
  for (int code = 0; code < 127; ++code) {
    const float v = E4M3ToF32(static_cast<uint8_t>(code));
    const float next = code < 126 ? E4M3ToF32(static_cast<uint8_t>(code + 1)) : 480.0f;
    const float mid = (v + next) / 2;  // exact in float32
    for (float y : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      ys.push_back(y);
      ys.push_back(-y);
    }
  }
  for (float y : {448.5f, 463.9f, 464.0f, 480.0f, 1e6f, 3e38f}) ys.push_back(y);
  std::mt19937 rng(3);
  for (int i = 0; i < 20000; ++i) {
    ys.push_back(std::ldexp(Normal(1, rng())[0], static_cast<int>(rng() % 30) - 20));
  }
  for (float y : ys) {
    ASSERT_EQ(reference::E4M3Round(y), F32ToBF16(E4M3ToF32(F32ToE4M3(y)))) << y;
  }
  // Spot values: ties to even in the normal and subnormal range, saturation, underflow.
  EXPECT_EQ(reference::E4M3Round(1.0625f), F32ToBF16(1.0f));
  EXPECT_EQ(reference::E4M3Round(1.1875f), F32ToBF16(1.25f));
  EXPECT_EQ(reference::E4M3Round(std::ldexp(1.0f, -10)), 0);
  EXPECT_EQ(reference::E4M3Round(std::ldexp(3.0f, -10)), F32ToBF16(std::ldexp(1.0f, -8)));
  EXPECT_EQ(reference::E4M3Round(-1000.0f), F32ToBF16(-448.0f));
  EXPECT_EQ(reference::E4M3Round(-1e-9f), 0x8000);
}

TEST(QuantGemmReference, Bf16RoundingAgreesWithDtype) {
  std::mt19937 rng(4);
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, 3.4e38f, -3.4e38f, INFINITY, -INFINITY, 1e-40f};
  for (int i = 0; i < 100000; ++i) {
    uint32_t bits = rng();
    if (i % 4 == 0) bits = (bits & 0xFFFF0000u) | 0x8000u;  // ties
    xs.push_back(F32FromBits(bits));
  }
  for (float x : xs) {
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(BF16ToF32(reference::Bf16Round(x))));
      EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(x))));
      continue;
    }
    ASSERT_EQ(reference::Bf16Round(x), F32ToBF16(x)) << std::hex << BitsFromF32(x);
  }
}

TEST(QuantGemmReference, Pow2Scales) {
  EXPECT_EQ(reference::QuantScale(448.0f, true), 1.0f);
  EXPECT_EQ(reference::QuantScale(449.0f, true), 2.0f);
  EXPECT_EQ(reference::QuantScale(447.0f, true), 1.0f);
  EXPECT_EQ(reference::QuantScale(224.0f, true), 0.5f);
  EXPECT_EQ(reference::QuantScale(0.0f, true), 1.0f);
  EXPECT_EQ(reference::QuantScale(0.0f, false), 1.0f);
  EXPECT_EQ(reference::QuantScale(896.0f, false), 2.0f);
}

// ---- per target ------------------------------------------------------------------------------

struct Variant {
  std::string target;
  bool dot;  // vdpbf16ps allowed (matters on AVX3 / AMX of CPUs with AVX512_BF16)
};
void PrintTo(const Variant& v, std::ostream* os) { *os << v.target << (v.dot ? "" : " no dot"); }

std::vector<Variant> Variants() {
  std::vector<Variant> v;
  for (const std::string& t : AvailableTargets()) {
    v.push_back({t, true});
    if (Bf16DotEnabled() && (t == "AVX3" || t == "AMX")) v.push_back({t, false});
  }
  return v;
}

class QuantGemmTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(ForceTarget(GetParam().target));
    SetBf16DotEnabled(GetParam().dot);
  }
  void TearDown() override {
    ForceTarget("");
    SetBf16DotEnabled(true);
  }
};

TEST_P(QuantGemmTest, ToBF16MatchesReference) {
  for (auto [rows, cols] : kQuantShapes) {
    const int64_t ldx = cols + 3, ldq = Pad(cols) + 5;
    std::vector<float> x = QuantInput(rows, cols, ldx, 11);
    // Specials in the first row: ties (both parities), NaN, infinities, overflow to infinity.
    const float specials[] = {
        F32FromBits(0x3F808000u), F32FromBits(0x3F818000u), NAN, -INFINITY, 3.4e38f, 1e-40f};
    for (int64_t c = 0; c < std::min<int64_t>(cols, 6); ++c) x[c] = specials[c];
    std::vector<uint16_t> q(rows * ldq, kSentinel), want(rows * cols);
    ToBF16(x.data(), rows, cols, ldx, q.data(), ldq);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float v = x[r * ldx + c];
        want[r * cols + c] = std::isnan(v) ? F32ToBF16(v) : reference::Bf16Round(v);
      }
    }
    ExpectCodes(q, ldq, want, rows, cols, Pad(cols),
                "ToBF16 " + std::to_string(rows) + "x" + std::to_string(cols));
    // Transposed: the codes of the transpose, rows padded to 128.
    const std::vector<float> xt = Transpose(x, rows, cols, ldx);
    const int64_t ldqt = Pad(rows) + 3;
    std::vector<uint16_t> qt(cols * ldqt, kSentinel), want_t(cols * rows);
    ToBF16Transposed(x.data(), rows, cols, ldx, qt.data(), ldqt);
    for (int64_t i = 0; i < cols * rows; ++i) {
      want_t[i] = std::isnan(xt[i]) ? F32ToBF16(xt[i]) : reference::Bf16Round(xt[i]);
    }
    ExpectCodes(qt, ldqt, want_t, cols, rows, Pad(rows), "ToBF16Transposed");
  }
}

TEST_P(QuantGemmTest, QuantizeTilesMatchesReference) {
  for (auto [rows, cols] : kQuantShapes) {
    for (bool pow2 : {false, true}) {
      const int64_t ldx = cols + 1, ldq = Pad(cols) + 2;
      const std::vector<float> x = QuantInput(rows, cols, ldx, 21 + rows);
      std::vector<uint16_t> q(rows * ldq, kSentinel), want(rows * cols);
      std::vector<float> scales(rows * Tiles(cols)), want_scales(scales.size());
      QuantizeE4M3Tiles(x.data(), rows, cols, ldx, pow2, q.data(), ldq, scales.data());
      reference::QuantizeE4M3(x.data(), rows, cols, ldx, 1, kT, pow2, want.data(),
                              want_scales.data());
      const std::string what =
          "tiles " + std::to_string(rows) + "x" + std::to_string(cols) + (pow2 ? " pow2" : "");
      ExpectScales(scales.data(), want_scales, what);
      ExpectCodes(q, ldq, want, rows, cols, Pad(cols), what);
      // The same codes as core/dtype.h's conversion of x / scale.
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const float y = x[r * ldx + c] / scales[r * Tiles(cols) + c / kT];
          ASSERT_EQ(q[r * ldq + c], F32ToBF16(E4M3ToF32(F32ToE4M3(y)))) << what;
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        if (r % 7 == 1 || r % 7 == 2 || r % 7 == 3) {  // zero tile, zero row, underflow: scale 1
          EXPECT_EQ(scales[r * Tiles(cols)], 1.0f) << what << " row " << r;
        }
        if (pow2) {
          for (int64_t j = 0; j < Tiles(cols); ++j) {
            int e;
            EXPECT_EQ(std::frexp(scales[r * Tiles(cols) + j], &e), 0.5f) << what;
          }
        }
      }
    }
  }
}

// Every E4M3 value, the midpoints between neighbours (ties to even), the floats next to them and
// subnormal-range values in one tile of amax 448, whose scale is exactly 1 (also pow2): the codes
// are the E4M3 rounding of x itself. And tiles whose amax / scale exceeds 448 in float32
// (saturation back to 448).
TEST_P(QuantGemmTest, QuantizeRoundsTiesToEvenAndSaturates) {
  std::vector<float> values;
  for (int code = 0; code < 127; ++code) {
    const float v = E4M3ToF32(static_cast<uint8_t>(code));
    const float mid = code < 126 ? (v + E4M3ToF32(static_cast<uint8_t>(code + 1))) / 2 : v;
    const float above = code < 126 ? std::nextafter(mid, 1e9f) : v;  // amax stays 448
    for (float y : {v, mid, std::nextafter(mid, 0.0f), above}) {
      values.push_back(y);
      values.push_back(-y);
    }
  }
  for (int e = -20; e < -5; ++e) values.push_back(std::ldexp(1.37f, e));
  const int64_t cols = static_cast<int64_t>(values.size());
  std::vector<float> x(values);
  for (int64_t c = 0; c < cols; c += kT) x[c] = kE4M3Max;  // amax 448 in every tile
  for (bool pow2 : {false, true}) {
    std::vector<uint16_t> q(Pad(cols));
    std::vector<float> scales(Tiles(cols));
    QuantizeE4M3Tiles(x.data(), 1, cols, cols, pow2, q.data(), Pad(cols), scales.data());
    for (float s : scales) ASSERT_EQ(s, 1.0f);
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_EQ(q[c], reference::E4M3Round(x[c])) << x[c];
      ASSERT_EQ(q[c], F32ToBF16(E4M3ToF32(F32ToE4M3(x[c])))) << x[c];
    }
  }
  EXPECT_EQ(reference::E4M3Round(1.0625f), F32ToBF16(1.0f));  // the tie rule, spelled out
  // Saturation: tiles of one value a with fl(a / fl(a / 448)) > 448.
  std::vector<float> amax;
  for (float a = 1.0f; amax.size() < 64 && a < 1e30f; a = std::nextafter(a * 1.001f, 1e9f)) {
    if (a / (a / kE4M3Max) > kE4M3Max) amax.push_back(a);
  }
  ASSERT_EQ(amax.size(), 64u);
  std::vector<float> tiles(amax.size() * kT, 0.0f);
  for (size_t i = 0; i < amax.size(); ++i) tiles[i * kT] = -amax[i];
  std::vector<uint16_t> q(tiles.size());
  std::vector<float> scales(amax.size());
  QuantizeE4M3Tiles(tiles.data(), static_cast<int64_t>(amax.size()), kT, kT, false, q.data(), kT,
                    scales.data());
  for (size_t i = 0; i < amax.size(); ++i) ASSERT_EQ(q[i * kT], kBf16Of448 | 0x8000) << amax[i];
}

// 128x1 tiles along the rows, transposed, are the 1x128 tiles of the transpose.
TEST_P(QuantGemmTest, QuantizeTilesTransposedIsTilesOfTranspose) {
  for (auto [rows, cols] : kQuantShapes) {
    for (bool pow2 : {false, true}) {
      const int64_t ldx = cols + 2, ldq = Pad(rows) + 1;
      const std::vector<float> x = QuantInput(rows, cols, ldx, 31 + cols);
      const std::vector<float> xt = Transpose(x, rows, cols, ldx);
      std::vector<uint16_t> q(cols * ldq, kSentinel), want(cols * ldq, kSentinel);
      std::vector<float> scales(cols * Tiles(rows)), want_scales(scales.size());
      QuantizeE4M3TilesTransposed(x.data(), rows, cols, ldx, pow2, q.data(), ldq, scales.data());
      QuantizeE4M3Tiles(xt.data(), cols, rows, rows, pow2, want.data(), ldq, want_scales.data());
      const std::string what = "tiles transposed " + std::to_string(rows) + "x" +
                               std::to_string(cols) + (pow2 ? " pow2" : "");
      ExpectScales(scales.data(), want_scales, what);
      ASSERT_EQ(q, want) << what;
      // And against the reference directly.
      std::vector<uint16_t> ref(cols * rows);
      reference::QuantizeE4M3(xt.data(), cols, rows, rows, 1, kT, pow2, ref.data(),
                              want_scales.data());
      ExpectScales(scales.data(), want_scales, what);
      ExpectCodes(q, ldq, ref, cols, rows, Pad(rows), what);
    }
  }
}

TEST_P(QuantGemmTest, QuantizeBlocksMatchesReference) {
  for (auto [rows, cols] : kQuantShapes) {
    for (bool pow2 : {false, true}) {
      const int64_t ldx = cols + 3, ldq = Pad(cols) + 1, ldqt = Pad(rows) + 4;
      const std::vector<float> x = QuantInput(rows, cols, ldx, 41 + rows + cols);
      std::vector<uint16_t> q(rows * ldq, kSentinel), qt(cols * ldqt, kSentinel);
      std::vector<uint16_t> want(rows * cols);
      std::vector<float> scales(Tiles(rows) * Tiles(cols)), want_scales(scales.size());
      QuantizeE4M3Blocks(x.data(), rows, cols, ldx, pow2, q.data(), ldq, qt.data(), ldqt,
                         scales.data());
      reference::QuantizeE4M3(x.data(), rows, cols, ldx, kT, kT, pow2, want.data(),
                              want_scales.data());
      const std::string what =
          "blocks " + std::to_string(rows) + "x" + std::to_string(cols) + (pow2 ? " pow2" : "");
      ExpectScales(scales.data(), want_scales, what);
      ExpectCodes(q, ldq, want, rows, cols, Pad(cols), what);
      std::vector<uint16_t> want_t(cols * rows);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) want_t[c * rows + r] = want[r * cols + c];
      }
      ExpectCodes(qt, ldqt, want_t, cols, rows, Pad(rows), what + " qt");
      // Without qt: the same q.
      std::vector<uint16_t> q2(rows * ldq, kSentinel);
      QuantizeE4M3Blocks(x.data(), rows, cols, ldx, pow2, q2.data(), ldq, nullptr, 0,
                         scales.data());
      ASSERT_EQ(q2, q) << what;
      // Block vs tile: a block's scale is the largest scale of the 1x128 tiles it holds (the
      // scale is monotonic in amax); with one row, blocks and tiles are the same.
      std::vector<uint16_t> qtile(rows * ldq, kSentinel);
      std::vector<float> tile_scales(rows * Tiles(cols));
      QuantizeE4M3Tiles(x.data(), rows, cols, ldx, pow2, qtile.data(), ldq, tile_scales.data());
      for (int64_t br = 0; br < Tiles(rows); ++br) {
        for (int64_t bc = 0; bc < Tiles(cols); ++bc) {
          float largest = 0;
          bool all_one = true;
          for (int64_t r = br * kT; r < std::min(rows, br * kT + kT); ++r) {
            const float s = tile_scales[r * Tiles(cols) + bc];
            const int64_t c0 = bc * kT, c1 = std::min(cols, c0 + kT);
            float amax = 0;
            for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[r * ldx + c]));
            if (amax / kE4M3Max > 0) {
              largest = std::max(largest, s);
              all_one = false;
            }
          }
          EXPECT_EQ(scales[br * Tiles(cols) + bc], all_one ? 1.0f : largest) << what;
        }
      }
      if (rows == 1) {
        ASSERT_EQ(qtile, q) << what;
        ExpectScales(scales.data(), tile_scales, what);
      }
    }
  }
}

TEST_P(QuantGemmTest, QuantizersIndependentOfThreadCount) {
  const int saved = NumThreads();
  const int64_t rows = 300, cols = 520;
  const std::vector<float> x = QuantInput(rows, cols, cols, 51);
  std::vector<std::vector<uint16_t>> outs;
  for (int threads : {1, 2, 3}) {
    SetNumThreads(threads);
    std::vector<uint16_t> q(rows * Pad(cols)), qt(cols * Pad(rows)), t(cols * Pad(rows));
    std::vector<float> s(Tiles(rows) * Tiles(cols)), st(cols * Tiles(rows));
    QuantizeE4M3Blocks(x.data(), rows, cols, cols, false, q.data(), Pad(cols), qt.data(), Pad(rows),
                       s.data());
    QuantizeE4M3TilesTransposed(x.data(), rows, cols, cols, true, t.data(), Pad(rows), st.data());
    q.insert(q.end(), qt.begin(), qt.end());
    q.insert(q.end(), t.begin(), t.end());
    outs.push_back(q);
  }
  SetNumThreads(saved);
  EXPECT_EQ(outs[0], outs[1]);
  EXPECT_EQ(outs[0], outs[2]);
}

// ---- Bf16Gemm --------------------------------------------------------------------------------

enum class Scales { kNone, kBoth, kA, kB };

struct GemmCase {
  int64_t M, N, K;
  Scales scales;
  float beta;
};

// Runs Bf16Gemm on random operands with padded strides and compares with the double reference:
// |C - ref| <= kGemmTolerance * (|beta C| + sum_k |sa sb a b|). The padding columns of C (NaN)
// must not be written.
constexpr double kGemmTolerance = 1e-6;

double CheckGemm(const GemmCase& t, uint32_t seed) {
  const int64_t M = t.M, N = t.N, K = t.K, KB = std::max<int64_t>(1, K / kT);
  const int64_t lda = K + 3, ldb = K + 1, ldc = N + 7, sa_stride = KB + 2, sb_stride = KB + 1;
  const std::vector<uint16_t> a = ToBf16Vector(Normal(M * lda, seed));
  const std::vector<uint16_t> b = ToBf16Vector(Normal(N * ldb, seed + 1));
  std::mt19937 rng(seed + 2);
  std::vector<float> sa(M * sa_stride), sb(N * sb_stride);
  for (float& s : sa)
    s = std::ldexp(1.0f + (rng() % 1000) / 1000.0f, static_cast<int>(rng() % 17) - 8);
  for (float& s : sb)
    s = std::ldexp(1.0f + (rng() % 1000) / 1000.0f, static_cast<int>(rng() % 17) - 8);
  const float* pa = t.scales == Scales::kBoth || t.scales == Scales::kA ? sa.data() : nullptr;
  const float* pb = t.scales == Scales::kBoth || t.scales == Scales::kB ? sb.data() : nullptr;
  std::vector<float> c(M * ldc, NAN);
  if (t.beta != 0) {
    const std::vector<float> c0 = Normal(M * ldc, seed + 3, 10.0f);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) c[m * ldc + n] = c0[m * ldc + n];
    }
  }
  std::vector<float> want(c), mag(M * ldc);
  Bf16Gemm(M, N, K, a.data(), lda, pa, sa_stride, b.data(), ldb, pb, sb_stride, t.beta, c.data(),
           ldc);
  reference::Bf16Gemm(M, N, K, a.data(), lda, pa, sa_stride, b.data(), ldb, pb, sb_stride, t.beta,
                      want.data(), ldc, mag.data());
  int64_t bad = 0;
  double worst = 0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < ldc; ++n) {
      const float got = c[m * ldc + n];
      if (n >= N) {
        if (!std::isnan(got) && bad++ < 5) ADD_FAILURE() << "padding written at " << m << "," << n;
        continue;
      }
      const double err = std::fabs(double{got} - want[m * ldc + n]);
      const double tol = kGemmTolerance * mag[m * ldc + n];
      if (mag[m * ldc + n] > 0) worst = std::max(worst, err / mag[m * ldc + n]);
      if (!(err <= tol) && bad++ < 5) {
        ADD_FAILURE() << "M=" << M << " N=" << N << " K=" << K << " scales "
                      << static_cast<int>(t.scales) << " beta " << t.beta << " at [" << m << "]["
                      << n << "]: " << got << " vs " << want[m * ldc + n] << " (tol " << tol << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0);
  return worst;
}

TEST_P(QuantGemmTest, Bf16GemmMatchesReference) {
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> unscaled = {
      {1, 1, 1}, {3, 5, 7}, {17, 33, 77}, {9, 70, 301}, {64, 96, 256}, {130, 65, 130}, {2, 3, 0}};
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> scaled = {
      {1, 1, 128}, {7, 13, 256}, {33, 65, 384}, {129, 100, 512}, {64, 128, 128}, {5, 9, 0}};
  uint32_t seed = 100;
  double worst = 0;
  for (float beta : {0.0f, 1.0f}) {
    for (auto [M, N, K] : unscaled) {
      worst = std::max(worst, CheckGemm({M, N, K, Scales::kNone, beta}, seed++));
    }
    for (auto [M, N, K] : scaled) {
      for (Scales s : {Scales::kBoth, Scales::kA, Scales::kB}) {
        worst = std::max(worst, CheckGemm({M, N, K, s, beta}, seed++));
      }
    }
  }
  std::printf("%s%s: worst |C - ref| / (|beta C| + sum |sa sb a b|) = %.3g\n",
              GetParam().target.c_str(), GetParam().dot ? "" : " (no vdpbf16ps)", worst);
}

// 1, 2 and 3 threads split rows and panels differently: the results are bit-identical.
TEST_P(QuantGemmTest, Bf16GemmIndependentOfThreadCount) {
  const int saved = NumThreads();
  for (auto [K, scaled] : {std::pair<int64_t, bool>{384, true}, {301, false}}) {
    const int64_t M = 203, N = 300;
    const std::vector<uint16_t> a = ToBf16Vector(Normal(M * K, 7));
    const std::vector<uint16_t> b = ToBf16Vector(Normal(N * K, 8));
    const std::vector<float> sa = Normal(M * 3, 9), sb = Normal(N * 3, 10);
    std::vector<std::vector<float>> outs;
    for (int threads : {1, 2, 3}) {
      SetNumThreads(threads);
      std::vector<float> c(M * N, NAN);
      Bf16Gemm(M, N, K, a.data(), K, scaled ? sa.data() : nullptr, 3, b.data(), K,
               scaled ? sb.data() : nullptr, 3, 0.0f, c.data(), N);
      outs.push_back(c);
    }
    SetNumThreads(saved);
    for (int i = 1; i < 3; ++i) {
      ASSERT_EQ(0, std::memcmp(outs[0].data(), outs[i].data(), M * N * 4)) << "K " << K;
    }
  }
}

// Bf16Gemm multiplies the operand with fewer rows against panels of the other (C^T = B A^T when
// M < N): the product with the operands exchanged is the transpose, bit for bit, also with scales
// and beta 1.
TEST_P(QuantGemmTest, Bf16GemmOfSwappedOperandsIsTheTranspose) {
  for (auto [M, N, K, scaled] : {std::tuple<int64_t, int64_t, int64_t, bool>{40, 300, 256, true},
                                 {7, 65, 129, false},
                                 {1, 33, 128, true}}) {
    const std::vector<uint16_t> a = ToBf16Vector(Normal(M * K, 71));
    const std::vector<uint16_t> b = ToBf16Vector(Normal(N * K, 72));
    const std::vector<float> sa = Normal(M * 2, 73), sb = Normal(N * 2, 74);
    const std::vector<float> c0 = Normal(M * N, 75);
    std::vector<float> c(c0), ct(M * N);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) ct[n * M + m] = c0[m * N + n];
    }
    Bf16Gemm(M, N, K, a.data(), K, scaled ? sa.data() : nullptr, 2, b.data(), K,
             scaled ? sb.data() : nullptr, 2, 1.0f, c.data(), N);
    Bf16Gemm(N, M, K, b.data(), K, scaled ? sb.data() : nullptr, 2, a.data(), K,
             scaled ? sa.data() : nullptr, 2, 1.0f, ct.data(), M);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        ASSERT_EQ(BitsFromF32(c[m * N + n]), BitsFromF32(ct[n * M + m]))
            << M << "x" << N << "x" << K << " at " << m << "," << n;
      }
    }
  }
}

// vdpbf16ps treats BF16 subnormal inputs as zero, float32 FMAs do not: a product of the smallest
// BF16 subnormal (2^-133) and 2^100 tells which one ran. The AVX3 target (and AMX) must use
// vdpbf16ps when the CPU has AVX512_BF16 and it is enabled; every other path multiplies.
TEST_P(QuantGemmTest, Bf16GemmUsesVdpbf16psExactlyWhereExpected) {
  const uint16_t a[2] = {0x0001, 0x0000};
  const uint16_t b[2] = {F32ToBF16(std::ldexp(1.0f, 100)), 0x0000};
  float c = NAN;
  Bf16Gemm(1, 1, 2, a, 2, nullptr, 0, b, 2, nullptr, 0, 0.0f, &c, 1);
  const bool dot = (GetParam().target == "AVX3" || GetParam().target == "AMX") && Bf16DotEnabled();
  EXPECT_EQ(c, dot ? 0.0f : std::ldexp(1.0f, -33)) << GetParam().target;
}

INSTANTIATE_TEST_SUITE_P(Targets, QuantGemmTest, ::testing::ValuesIn(Variants()),
                         [](const auto& info) {
                           return info.param.target + (info.param.dot ? "" : "_NoBf16Dot");
                         });

TEST(QuantGemm, Bf16GemmRejectsPartialBlocksWithScales) {
  const std::vector<uint16_t> a(100), b(100);
  const float s[1] = {1.0f};
  float c[1];
  EXPECT_THROW(Bf16Gemm(1, 1, 100, a.data(), 100, s, 1, b.data(), 100, nullptr, 1, 0.0f, c, 1),
               Error);
  EXPECT_THROW(Bf16Gemm(1, 1, 100, a.data(), 100, nullptr, 1, b.data(), 100, s, 1, 0.0f, c, 1),
               Error);
}

// ---- end to end: FP8 linear-layer products against float32 ------------------------------------

// Relative errors of a product y [rows, cols] against the exact product of the unquantized
// operands: worst |y - exact| / sum_k |x w| per element, and ||y - exact|| / ||exact||.
struct ErrorStats {
  double per_element = 0, normwise = 0;
};

// exact(i, j) = sum_k a(i, k) b(j, k), a [rows, K] and b [cols, K] row-major floats.
ErrorStats Compare(const std::vector<float>& y, const std::vector<float>& a,
                   const std::vector<float>& b, int64_t rows, int64_t cols, int64_t K) {
  ErrorStats e;
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      double exact = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double{a[i * K + k]} * b[j * K + k];
        exact += p;
        mag += std::fabs(p);
      }
      const double d = y[i * cols + j] - exact;
      e.per_element = std::max(e.per_element, std::fabs(d) / mag);
      err2 += d * d;
      ref2 += exact * exact;
    }
  }
  e.normwise = std::sqrt(err2 / ref2);
  return e;
}

// A 128x128 block scale grid [ceil(R/128), ceil(C/128)] of a matrix [R, C] expanded per row for
// Bf16Gemm's B operand: rows of W (forward, sb [R, C/128]) or of W^T (data gradient, sb [C,
// R/128]).
std::vector<float> ExpandRows(const std::vector<float>& blocks, int64_t R, int64_t C) {
  std::vector<float> sb(R * Tiles(C));
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < Tiles(C); ++j) sb[r * Tiles(C) + j] = blocks[(r / kT) * Tiles(C) + j];
  }
  return sb;
}
std::vector<float> ExpandColumns(const std::vector<float>& blocks, int64_t R, int64_t C) {
  std::vector<float> sb(C * Tiles(R));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t i = 0; i < Tiles(R); ++i) sb[c * Tiles(R) + i] = blocks[i * Tiles(C) + c / kT];
  }
  return sb;
}

// The three products of a linear layer y = x W^T (x [T, K], W [N, K], dy [T, N]) with the
// paper's recipe: x and dy in 1x128 tiles, W in 128x128 blocks (W^T from qt), the weight gradient
// from 128x1 tiles of dy and x along T (T = 200 is not a multiple of 128: padded). E4M3 keeps 3
// mantissa bits, so each factor is within 2^-4 relative (normal range) and each product within
// 2 * 2^-4 + 2^-8 < 0.13 of |x w|, which bounds |y - exact| / sum_k |x w| (subnormal codes aside).
// Random errors mostly cancel: measured here, at most 0.020 of sum_k |x w| per element (asserted
// < 0.04) and 0.036-0.038 normwise (asserted < 0.05), pow2 scales alike. The same products in
// BF16 (8 bits, 2^-8 + 2^-8 per product): 0.0009 per element, 0.0024 normwise.
TEST(QuantGemm, Fp8LinearLayerWithinQuantizationError) {
  const int64_t T = 200, K = 512, N = 384, Tp = Pad(T);
  const std::vector<float> x = Normal(T * K, 61), w = Normal(N * K, 62, 0.05f);
  const std::vector<float> dy = Normal(T * N, 63, 0.1f);
  const std::vector<float> wt = Transpose(w, N, K, K), xt = Transpose(x, T, K, K);
  const std::vector<float> dyt = Transpose(dy, T, N, N);
  for (bool pow2 : {false, true}) {
    std::vector<uint16_t> xq(T * K), dyq(T * N), wq(N * K), wtq(K * N);
    std::vector<float> sx(T * Tiles(K)), sdy(T * Tiles(N)), sw(Tiles(N) * Tiles(K));
    QuantizeE4M3Tiles(x.data(), T, K, K, pow2, xq.data(), K, sx.data());
    QuantizeE4M3Tiles(dy.data(), T, N, N, pow2, dyq.data(), N, sdy.data());
    QuantizeE4M3Blocks(w.data(), N, K, K, pow2, wq.data(), K, wtq.data(), N, sw.data());
    std::vector<uint16_t> dytq(N * Tp), xtq(K * Tp);
    std::vector<float> sdyt(N * Tiles(T)), sxt(K * Tiles(T));
    QuantizeE4M3TilesTransposed(dy.data(), T, N, N, pow2, dytq.data(), Tp, sdyt.data());
    QuantizeE4M3TilesTransposed(x.data(), T, K, K, pow2, xtq.data(), Tp, sxt.data());

    // Forward y [T, N] = x W^T.
    const std::vector<float> sw_rows = ExpandRows(sw, N, K);
    std::vector<float> y(T * N), y_ref(T * N);
    Bf16Gemm(T, N, K, xq.data(), K, sx.data(), Tiles(K), wq.data(), K, sw_rows.data(), Tiles(K),
             0.0f, y.data(), N);
    // The GEMM itself is exact to float32 accumulation on the quantized operands.
    std::vector<float> mag(T * N);
    reference::Bf16Gemm(T, N, K, xq.data(), K, sx.data(), Tiles(K), wq.data(), K, sw_rows.data(),
                        Tiles(K), 0.0f, y_ref.data(), N, mag.data());
    for (int64_t i = 0; i < T * N; ++i) ASSERT_LE(std::fabs(y[i] - y_ref[i]), 1e-6 * mag[i]);
    // Data gradient dx [T, K] = dy W: B = W^T [K, N] with the block scales per row of W^T.
    const std::vector<float> sw_cols = ExpandColumns(sw, N, K);
    std::vector<float> dx(T * K);
    Bf16Gemm(T, K, N, dyq.data(), N, sdy.data(), Tiles(N), wtq.data(), N, sw_cols.data(), Tiles(N),
             0.0f, dx.data(), K);
    // Weight gradient dW [N, K] = dy^T x over the padded T.
    std::vector<float> dw(N * K);
    Bf16Gemm(N, K, Tp, dytq.data(), Tp, sdyt.data(), Tiles(T), xtq.data(), Tp, sxt.data(), Tiles(T),
             0.0f, dw.data(), K);

    const ErrorStats fwd = Compare(y, x, w, T, N, K);
    const ErrorStats dgrad = Compare(dx, dy, wt, T, K, N);
    const ErrorStats wgrad = Compare(dw, dyt, xt, N, K, T);
    for (const auto& [name, e] :
         {std::pair<const char*, ErrorStats>{"forward", fwd}, {"dgrad", dgrad}, {"wgrad", wgrad}}) {
      std::printf("FP8 %s%s: per element %.4f of sum|xw|, normwise %.4f\n", name,
                  pow2 ? " (pow2)" : "", e.per_element, e.normwise);
      EXPECT_LT(e.per_element, 0.04) << name;
      EXPECT_LT(e.normwise, 0.05) << name;
    }
  }
  // BF16 operands (ToBF16 / ToBF16Transposed), no scales.
  std::vector<uint16_t> xb(T * K), wb(N * K), wtb(K * Pad(N));
  ToBF16(x.data(), T, K, K, xb.data(), K);
  ToBF16(w.data(), N, K, K, wb.data(), K);
  ToBF16Transposed(w.data(), N, K, K, wtb.data(), Pad(N));
  std::vector<float> y(T * N), dx(T * K);
  Bf16Gemm(T, N, K, xb.data(), K, nullptr, 0, wb.data(), K, nullptr, 0, 0.0f, y.data(), N);
  std::vector<uint16_t> dyb(T * N);
  ToBF16(dy.data(), T, N, N, dyb.data(), N);
  Bf16Gemm(T, K, N, dyb.data(), N, nullptr, 0, wtb.data(), Pad(N), nullptr, 0, 0.0f, dx.data(), K);
  const ErrorStats fwd = Compare(y, x, w, T, N, K), dgrad = Compare(dx, dy, wt, T, K, N);
  std::printf("BF16 forward: per element %.5f, normwise %.5f; dgrad %.5f, %.5f\n", fwd.per_element,
              fwd.normwise, dgrad.per_element, dgrad.normwise);
  EXPECT_LT(fwd.per_element, 2.0 / 256);
  EXPECT_LT(fwd.normwise, 0.004);
  EXPECT_LT(dgrad.normwise, 0.004);
}

}  // namespace
}  // namespace dsv3::kernels
