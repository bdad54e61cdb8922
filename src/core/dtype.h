// Element types found in Hugging Face checkpoints and their conversions to float32.
// bf16 / fp16 / fp8 are stored as raw bits (uint16_t / uint8_t): the compilers we target have no
// usable native types for them.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace dsv3 {

enum class DType : uint8_t { kF32, kBF16, kF16, kF8E4M3, kI32, kI64, kU8 };

// Safetensors dtype string ("BF16", "F8_E4M3", ...) <-> DType.
std::optional<DType> DTypeFromName(std::string_view name);
const char* DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

inline float F32FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint32_t BitsFromF32(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

inline float BF16ToF32(uint16_t v) { return F32FromBits(static_cast<uint32_t>(v) << 16); }
// Round to nearest even; NaN stays NaN.
uint16_t F32ToBF16(float f);

float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);

// FP8 E4M3 "fn": 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no infinities,
// 0x7F / 0xFF are NaN, largest finite magnitude 448.
extern const std::array<float, 256> kE4M3ToF32;
inline float E4M3ToF32(uint8_t code) { return kE4M3ToF32[code]; }
// Round to nearest even, saturating to +-448 (what quantizers do with amax scaling); NaN -> 0x7F.
uint8_t F32ToE4M3(float f);

}  // namespace dsv3
