// Low-precision training products (DeepSeek-V3 technical report section 3.3): operands in BF16,
// or quantized to FP8 E4M3 with one float32 scale per 1x128 tile (activations and activation
// gradients, along the reduction dimension) or per 128x128 block (weights), products accumulated
// in float32 per 128-element block of the reduction and rescaled. Every E4M3 value is exactly a
// BF16 value, so quantized operands are stored as BF16 bits and one BF16 GEMM serves both modes.
//
// Bf16Gemm takes one scale per (row, 128-block of the reduction) for each operand. Weight blocks
// (128x128, QuantizeE4M3Blocks) are therefore passed expanded per row by the caller: for the
// forward product y = x W^T with W [N, K], sb [N, K/128] with sb[n][kb] = scales[n / 128][kb];
// for the data gradient dx = dy W, whose B operand is W^T [K, N] (the qt copy), sb [K, N/128]
// with sb[k][nb] = scales[nb][k / 128]. The weight gradient dW = dy^T x takes both operands
// from QuantizeE4M3TilesTransposed (K = the token count rounded up to 128; the padding is zero)
// with their scales as returned.
//
// On CPUs with AVX512_BF16, the AVX3 target (and "AMX", which is AVX3) multiplies with the native
// BF16 dot product (vdpbf16ps): the product of two BF16 values is exact in float32, so results
// stay within float32 accumulation error of exact arithmetic; as that instruction does, BF16
// subnormal inputs count as zero there (quantized operands never are subnormal as BF16). Highway
// 1.0.3 (Debian 12) has neither an AVX3_ZEN4 / AVX3_SPR target nor a BF16 dot op, so the AVX3
// target calls the instruction itself after a CPUID check. Other targets widen BF16 to float32
// and use FMAs. Plain references: tests/kernels_reference.h.
#pragma once

#include <cstdint>

namespace dsv3::kernels {

inline constexpr int64_t kQuantTile = 128;  // tile / block edge
inline constexpr float kE4M3Max = 448.0f;

// C[M, N] = beta * C + sum_kb sa(m, kb) sb(n, kb) sum_{k in block kb} A[m][k] B[n][k]
// A [M, K] (lda), B [N, K] (ldb), BF16 bits, row-major: both operands have the reduction dimension
// contiguous. Scales sa [M, K/128] (row stride sa_stride), sb [N, K/128] (sb_stride); with both
// null every scale is 1 and K may be any size, otherwise K is a multiple of 128 (else dsv3::Error)
// and a null one of the two counts as all ones. beta 0 (C is overwritten and may hold NaN) or 1.
// Float32 accumulation within each block; blocks are summed in float32 in ascending order (also
// without scales: 128-blocks of k, the last one partial). Threaded over output tiles; every
// element's result is independent of the thread count.
void Bf16Gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const float* sa,
              int64_t sa_stride, const uint16_t* b, int64_t ldb, const float* sb, int64_t sb_stride,
              float beta, float* c, int64_t ldc);

// Whether Bf16Gemm uses vdpbf16ps when the AVX3 target runs: the CPU has AVX512_BF16 and it is
// not switched off (tests and benchmarks switch it off to cover the float32 FMA path of AVX3 as
// well). Not for use while a Bf16Gemm runs on another thread.
bool Bf16DotEnabled();
void SetBf16DotEnabled(bool enabled);

// x [rows, cols] (ldx) -> q [rows, cols_pad] (ldq >= cols_pad = cols rounded up to 128), BF16 bits,
// rounded to nearest even; columns cols..cols_pad-1 are zero. NaN stays NaN (quiet), infinities
// stay infinite, finite values beyond the largest BF16 round to infinity.
void ToBF16(const float* x, int64_t rows, int64_t cols, int64_t ldx, uint16_t* q, int64_t ldq);
// The same, transposed: q [cols, rows_pad] with q[c][r] = bf16(x[r][c]), rows_pad = rows rounded
// up to 128, padding zero.
void ToBF16Transposed(const float* x, int64_t rows, int64_t cols, int64_t ldx, uint16_t* q,
                      int64_t ldq);

// The quantizers take finite x (NaN or infinity give unspecified codes and scales).
//
// 1x128 tiles: for each row r and tile j (columns [128 j, 128 j + 128) of that row),
// scale = amax / 448 in float32 (amax over the tile; with pow2, rounded up to a power of two:
// the least 2^e >= amax / 448), q = E4M3(x / scale) (float32 division) rounded to nearest even,
// saturated to +-448 (magnitudes below 2^-6 round to the E4M3 subnormals, multiples of 2^-9, or
// to a zero that keeps the sign), stored as its BF16 bits in q [rows, cols_pad] (padding zero;
// rows are not padded); scales [rows, ceil(cols / 128)]
// (row stride ceil(cols/128)). A tile that is all zero (or whose amax / 448 underflows to zero)
// gets scale 1 (so q is 0). x is dequantized as q * scale. These are the codes of dsv3::F32ToE4M3
// (core/dtype.h) applied to x / scale.
void QuantizeE4M3Tiles(const float* x, int64_t rows, int64_t cols, int64_t ldx, bool pow2,
                       uint16_t* q, int64_t ldq, float* scales);
// 128x1 tiles along the rows, written transposed (the weight-gradient operands): q [cols,
// rows_pad] with q[c][r] from tile (r / 128, c), scales [cols, ceil(rows / 128)]. The same as
// QuantizeE4M3Tiles of the transpose of x.
void QuantizeE4M3TilesTransposed(const float* x, int64_t rows, int64_t cols, int64_t ldx, bool pow2,
                                 uint16_t* q, int64_t ldq, float* scales);
// 128x128 blocks: one scale per block, scales [ceil(rows/128), ceil(cols/128)]; q [rows,
// cols_pad] and, when qt != nullptr, the same codes transposed into qt [cols, rows_pad] (the
// data-gradient operand W^T, whose blocks are the same blocks), padding zero in both.
void QuantizeE4M3Blocks(const float* x, int64_t rows, int64_t cols, int64_t ldx, bool pow2,
                        uint16_t* q, int64_t ldq, uint16_t* qt, int64_t ldqt, float* scales);

}  // namespace dsv3::kernels
