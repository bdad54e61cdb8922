// dtype conversions: the E4M3 decode table against the independent table in the test data, and
// the encoders (E4M3, BF16, F16) against brute force.
#include "core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/matmul.h"
#include "kernels/targets.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

TEST(E4M3, DecodesAll256CodesLikeTheReferenceTable) {
  const std::string path = test::TestData("models/fp8_e4m3fn_decode_table.json");
  DSV3_REQUIRE_DATA(path);
  const Json table = ReadJsonFile(path, 1 << 20)["decode"];
  ASSERT_EQ(table.size(), 256u);
  for (int code = 0; code < 256; ++code) {
    if (table[code].is_null()) {
      EXPECT_TRUE(std::isnan(E4M3ToF32(static_cast<uint8_t>(code)))) << code;
    } else {
      EXPECT_EQ(E4M3ToF32(static_cast<uint8_t>(code)), table[code].get<double>()) << code;
    }
  }
}

// The SIMD conversion inside the kernels (bit rebias, not the table) must agree on every code and
// every target: a matrix holding all 256 codes, dequantized row by row.
TEST(E4M3, KernelConversionMatchesTableOnEveryTarget) {
  std::vector<uint8_t> codes(256);
  for (int i = 0; i < 256; ++i) codes[i] = static_cast<uint8_t>(i);
  const float scale = 1.0f;
  kernels::WeightMatrix w{DType::kF8E4M3, 1, 256, codes.data(), &scale, 128, 256, 1};
  for (const std::string& target : kernels::AvailableTargets()) {
    ASSERT_TRUE(kernels::ForceTarget(target));
    std::vector<float> out(256);
    kernels::DequantRow(w, 0, out.data());
    for (int code = 0; code < 256; ++code) {
      const float want = E4M3ToF32(static_cast<uint8_t>(code));
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(out[code])) << target << " code " << code;
      } else {
        EXPECT_EQ(BitsFromF32(out[code]), BitsFromF32(want)) << target << " code " << code;
      }
    }
  }
  kernels::ForceTarget("");
}

// Nearest finite E4M3 by exhaustive search, ties to the even code, saturating at 448.
uint8_t NearestE4M3(float f) {
  const float mag = std::fabs(f);
  int best = 0;
  for (int code = 1; code <= 0x7E; ++code) {
    const float d = std::fabs(E4M3ToF32(code) - mag), db = std::fabs(E4M3ToF32(best) - mag);
    if (d < db || (d == db && code % 2 == 0 && best % 2 == 1)) best = code;
  }
  return static_cast<uint8_t>((std::signbit(f) ? 0x80 : 0) | best);
}

TEST(E4M3, EncodeRoundsToNearestEven) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;
    EXPECT_EQ(F32ToE4M3(E4M3ToF32(static_cast<uint8_t>(code))), code) << code;
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-12, 9.5);
  for (int i = 0; i < 200000; ++i) {
    const float v = std::exp2(exponent(rng)) * (i % 2 ? -1.0f : 1.0f);
    ASSERT_EQ(F32ToE4M3(v), NearestE4M3(v)) << v;
  }
  // Exact midpoints between neighbours go to the even code.
  for (int code = 0; code < 0x7E; ++code) {
    const float mid = (E4M3ToF32(code) + E4M3ToF32(code + 1)) / 2;
    EXPECT_EQ(F32ToE4M3(mid), NearestE4M3(mid)) << "midpoint after code " << code;
  }
  EXPECT_EQ(F32ToE4M3(1000.0f), 0x7E);
  EXPECT_EQ(F32ToE4M3(-1e30f), 0xFE);
  EXPECT_EQ(F32ToE4M3(NAN), 0x7F);
}

TEST(BF16, RoundTripsAndRoundsToNearestEven) {
  for (uint32_t v = 0; v < 0x10000; ++v) {
    const float f = BF16ToF32(static_cast<uint16_t>(v));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(f))));
    } else {
      EXPECT_EQ(F32ToBF16(f), v);
    }
  }
  EXPECT_EQ(F32ToBF16(F32FromBits(0x3F808000)), 0x3F80);  // tie -> even (down)
  EXPECT_EQ(F32ToBF16(F32FromBits(0x3F818000)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(F32ToBF16(F32FromBits(0x3F808001)), 0x3F81);  // above the tie
}

TEST(F16, RoundTripsAllCodes) {
  EXPECT_EQ(F16ToF32(0x3C00), 1.0f);
  EXPECT_EQ(F16ToF32(0xC000), -2.0f);
  EXPECT_EQ(F16ToF32(0x7BFF), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(F16ToF32(0x7C00)));
  for (uint32_t v = 0; v < 0x10000; ++v) {
    const float f = F16ToF32(static_cast<uint16_t>(v));
    if (!std::isnan(f)) {
      EXPECT_EQ(F32ToF16(f), v) << v;
    }
  }
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie -> even
  EXPECT_EQ(F32ToF16(1e6f), 0x7C00);
}

TEST(DType, NamesRoundTrip) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kI32, DType::kI64,
                  DType::kU8}) {
    EXPECT_EQ(DTypeFromName(DTypeName(d)), d);
  }
  EXPECT_FALSE(DTypeFromName("F8_E5M2").has_value());
  EXPECT_EQ(DTypeSize(DType::kF8E4M3), 1u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
}

}  // namespace
}  // namespace dsv3
