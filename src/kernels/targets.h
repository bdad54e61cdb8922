// Which SIMD targets this build carries, which one runs, and forcing one (tests, `--simd`).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::kernels {

// Compiled targets that this CPU supports, best first ("AMX", "AVX3", "AVX2", "SSE4", ...,
// "SCALAR"). "AMX" is AVX3 plus AMX tiles for the prompt-sized products (see amx.h); forcing
// "AVX3" or lower turns the tiles off.
std::vector<std::string> AvailableTargets();
// The target the dispatcher currently uses.
std::string ActiveTarget();
// Restricts dispatch to the named target; returns false if it is not available. "" restores the
// default (best available).
bool ForceTarget(const std::string& name);

// Precision of the activations in the AMX products (`--matmul`; process-wide). The SIMD targets
// compute in float32 either way.
enum class MatMulPrecision {
  // Float32 products (default): each activation enters the tiles as three BF16 parts, so the
  // products are exact and only the float32 accumulation rounds.
  kF32,
  // Activations rounded to BF16 once (relative error <= 2^-9, as BF16 inference computes): a
  // third of the tile work in prompt-sized products. The absorbed attention over a BF16 cache
  // likewise takes queries and probabilities in one BF16 part instead of two.
  kBF16,
};
void SetMatMulPrecision(MatMulPrecision precision);
MatMulPrecision GetMatMulPrecision();
const char* MatMulPrecisionName(MatMulPrecision precision);  // "f32", "bf16"
std::optional<MatMulPrecision> MatMulPrecisionFromName(std::string_view name);

}  // namespace dsv3::kernels
