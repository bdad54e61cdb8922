// Products of float32 activations with weight matrices stored as F32, BF16, F16 or FP8 E4M3 with
// block scales. Weights are converted to float32 inside the kernel, one tile at a time; they are
// never expanded in memory. Runtime dispatch picks the best compiled SIMD target (Highway).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace dsv3::kernels {

// W [rows, cols], row-major, y = W x. For kF8E4M3, W[r][c] = e4m3(q[r][c]) * scale[r / block_rows]
// [c / block_cols] with `scale` [ceil(rows / block_rows), scale_cols] float32 (the checkpoint's
// weight_scale_inv); other dtypes have scale == nullptr.
struct WeightMatrix {
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;
  const float* scale = nullptr;
  int64_t block_rows = 0, block_cols = 0, scale_cols = 0;

  bool empty() const { return data == nullptr; }
  uint64_t bytes() const;  // weight bytes including scales
};

// Calls with fewer tokens than this compute every token exactly as a one-token call would (bit for
// bit), reading each weight once for all of them; from this many on, a blocked matrix product.
inline constexpr int64_t kGemmMinTokens = 8;

// kAuto: the decode path below kGemmMinTokens, the blocked product from there on.
// kPerToken: the decode path for any number of tokens (in groups), so that every token's result
// is bit for bit what a one-token call gives: batches of several sequences' decode steps use it to
// answer exactly as each sequence alone would.
enum class MatMulPath { kAuto, kPerToken };

// Precision of the activations in the products that run on AMX tiles (`--matmul`). The SIMD
// targets compute in float32 either way.
enum class MatMulPrecision {
  // Float32 products (default): each activation enters the tiles as three BF16 parts, so the
  // products are exact and only the float32 accumulation rounds.
  kF32,
  // Activations rounded to BF16 once (relative error <= 2^-9, as BF16 inference computes): a
  // third of the tile work in prompt-sized products. The absorbed attention over a BF16 cache
  // likewise takes queries and probabilities in one BF16 part instead of two.
  kBF16,
};
const char* MatMulPrecisionName(MatMulPrecision precision);  // "f32", "bf16"
std::optional<MatMulPrecision> MatMulPrecisionFromName(std::string_view name);

// How a product runs: a value passed with every call (no process-wide state), so contexts with
// different settings can share a process.
struct MatMulOptions {
  MatMulPath path = MatMulPath::kAuto;
  MatMulPrecision precision = MatMulPrecision::kF32;
};

// Y[t][r] = sum_c W[r][c] * X[t][c], t < T, all rows; threads split the rows.
// X: [T, x_stride], Y: [T, y_stride].
void MatMul(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
            int64_t y_stride, const MatMulOptions& options = {});

// The same for rows [r0, r1) only, on the calling thread: Y[t][r - r0] is written to
// y[t * y_stride + r - r0].
void MatMulRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                int64_t T, float* y, int64_t y_stride, const MatMulOptions& options = {});

// y[c] += sum_{r in [r0, r1)} x[r - r0] * W[r][c] for all c < cols: a product with the transpose of
// a row slice (the absorbed MLA query, q_nope^T W_uk). Calling thread only.
void MatVecTransposedRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, float* y);

// out[c] = W[r][c] for c < cols, dequantized.
void DequantRow(const WeightMatrix& w, int64_t r, float* out);

// Whether the FP8 decode path of the AVX3 target (and "AMX") converts E4M3 codes by byte table
// lookups (vpermi2b): the CPU has AVX512_VBMI and it is not switched off. Otherwise it goes
// through float16 (F16C), as AVX2 does. Tests and benchmarks switch it off to cover that route
// on AVX3 too; not while a product runs on another thread. Both give the same values.
bool Fp8LookupEnabled();
void SetFp8LookupEnabled(bool enabled);

// Weights quantized to FP8 the way DeepSeek's FP8 checkpoints store them: E4M3 codes with one
// float32 scale per 128 x 128 block.
struct Fp8Weights {
  std::vector<uint8_t> codes;  // [rows, cols]
  std::vector<float> scales;   // [ceil(rows / 128), ceil(cols / 128)]
  WeightMatrix matrix;         // over codes and scales
};
// w (any dtype) per 128 x 128 block: scale = amax / 448 of the block's values (1 where that is
// zero: a block that is all zero or whose amax / 448 underflows), code = E4M3(value / scale)
// rounded to nearest even (dsv3::F32ToE4M3). Each weight moves by at most half an E4M3 step: 2^-4
// of its magnitude where that is at least 2^-6 * scale (3 mantissa bits), 2^-10 * scale below
// (the subnormals). Threaded over block rows.
std::unique_ptr<Fp8Weights> QuantizeFp8Blocks(const WeightMatrix& w);

}  // namespace dsv3::kernels
