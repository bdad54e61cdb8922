// dtype names and scalar conversions. The E4M3 table is built from the bit layout, not typed in.
#include "core/dtype.h"

#include <array>
#include <cmath>
#include <limits>

namespace dsv3 {

std::optional<DType> DTypeFromName(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "F8_E4M3") return DType::kF8E4M3;
  if (name == "I32") return DType::kI32;
  if (name == "I64") return DType::kI64;
  if (name == "U8") return DType::kU8;
  return std::nullopt;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
    case DType::kU8:
      return "U8";
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kF8E4M3:
    case DType::kU8:
      return 1;
    case DType::kI64:
      return 8;
  }
  return 0;
}

uint16_t F32ToBF16(float f) {
  uint32_t bits = BitsFromF32(f);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToF32(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000) << 16;
  const uint32_t exp = (v >> 10) & 0x1F;
  const uint32_t mant = v & 0x3FF;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return (v & 0x8000) ? -mag : mag;
  }
  if (exp == 31) return F32FromBits(sign | 0x7F800000 | (mant << 13));
  return F32FromBits(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t F32ToF16(float f) {
  const uint32_t bits = BitsFromF32(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const float mag = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7E00;
  if (mag >= 65520.0f) return sign | 0x7C00;            // rounds to infinity
  if (mag < 6.103515625e-05f) {                         // subnormal range: multiples of 2^-24
    const float q = std::nearbyint(mag * 16777216.0f);  // round-half-even (default mode)
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t m = bits & 0x7FFFFFFF;
  m += 0xFFF + ((m >> 13) & 1);  // round mantissa to 10 bits, ties to even
  return sign | static_cast<uint16_t>((m >> 13) - (112u << 10));
}

static std::array<float, 256> BuildE4M3Table() {
  std::array<float, 256> table{};
  for (int code = 0; code < 256; ++code) {
    const int exp = (code >> 3) & 0xF;
    const int mant = code & 0x7;
    float mag;
    if (exp == 15 && mant == 7) {
      mag = std::numeric_limits<float>::quiet_NaN();
    } else if (exp == 0) {
      mag = std::ldexp(static_cast<float>(mant), -9);  // mant/8 * 2^-6
    } else {
      mag = std::ldexp(1.0f + mant / 8.0f, exp - 7);
    }
    table[code] = (code & 0x80) ? -mag : mag;
  }
  return table;
}

const std::array<float, 256> kE4M3ToF32 = BuildE4M3Table();

uint8_t F32ToE4M3(float f) {
  if (std::isnan(f)) return 0x7F;
  const uint32_t bits = BitsFromF32(f);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  const uint32_t abs_bits = bits & 0x7FFFFFFF;
  const float mag = F32FromBits(abs_bits);
  if (mag >= 448.0f) return sign | 0x7E;  // saturate
  if (mag < 0x1p-6f) {                    // E4M3 subnormals are the multiples of 2^-9
    return sign | static_cast<uint8_t>(std::nearbyint(mag * 512.0f));  // 8 -> 0x08 = 2^-6
  }
  // Round the 23-bit mantissa to 3 bits, ties to even; a carry moves into the exponent. Then
  // rebias the exponent from 127 to 7.
  const uint32_t rounded = (abs_bits + 0x7FFFF + ((abs_bits >> 20) & 1)) >> 20;
  return sign | static_cast<uint8_t>(rounded - ((127 - 7) << 3));
}

}  // namespace dsv3
