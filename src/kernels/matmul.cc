// Weight-times-activation products for every stored weight dtype, converted to float32 inside the
// kernel. Decode (fewer than 4 tokens) converts in registers and multiplies at once, 4 rows
// sharing each activation load; FP8 block scales multiply per-block vector partial sums. Prefill
// dequantizes 4 full rows into a per-thread tile once per token chunk and runs a 4 x 4
// (rows x tokens) register-blocked micro-kernel over them.

#include "kernels/matmul.h"

// GCC 12 warns inside its own AVX-512 headers ("__Y may be used uninitialized") when they inline.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/aligned.h"
#include "core/parallel.h"
#include "kernels/amx.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/matmul.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/cache_control.h"
#include "kernels/dot-inl.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dsv3::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// A prefetch into L2 (T1): the decode path streams rows a little ahead of use; into L1 (T0) it
// evicts what the kernel is about to read (measured: BF16 rows from DRAM at 17 GB/s with T0
// against 26 GB/s with T1 on one Zen 4 core, where STREAM reads 26.5).
HWY_INLINE void PrefetchL2(const void* p) {
#if HWY_ARCH_X86
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
#else
  hwy::Prefetch(p);
#endif
}

constexpr int64_t kRowTile = 4;   // weight rows per micro-kernel
constexpr int64_t kTokTile = 4;   // tokens per micro-kernel (prefill)
constexpr int64_t kMaxSeg = 512;  // columns per block (decode) or segment (row helpers)
// Fewer tokens than kGemmMinTokens take the decode path, whose per-token results do not depend on
// how many tokens share the call (speculative verification reproduces plain decoding exactly).
constexpr int64_t kMaxDecodeTokens = kGemmMinTokens - 1;

// ---- conversion of stored weights to float32 ------------------------------------------------

// dst[i] = float(src[offset + i]) for i < n, unscaled. Used to build tiles and for single rows.
template <DType kType>
HWY_INLINE void ToF32(const void* HWY_RESTRICT src_void, int64_t offset, int64_t n,
                      float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  if constexpr (kType == DType::kF32) {
    const float* src = static_cast<const float*>(src_void) + offset;
    for (; i + N <= n; i += N) hn::StoreU(hn::LoadU(df, src + i), df, dst + i);
    for (; i < n; ++i) dst[i] = src[i];
  } else if constexpr (kType == DType::kBF16) {
    const hn::Rebind<hwy::bfloat16_t, decltype(df)> dbf;
    const auto* src = static_cast<const hwy::bfloat16_t*>(src_void) + offset;
    for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dbf, src + i)), df, dst + i);
    const uint16_t* raw = static_cast<const uint16_t*>(src_void) + offset;
    for (; i < n; ++i) dst[i] = BF16ToF32(raw[i]);
  } else if constexpr (kType == DType::kF16) {
    const hn::Rebind<hwy::float16_t, decltype(df)> dh;
    const auto* src = static_cast<const hwy::float16_t*>(src_void) + offset;
    for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, src + i)), df, dst + i);
    const uint16_t* raw = static_cast<const uint16_t*>(src_void) + offset;
    for (; i < n; ++i) dst[i] = F16ToF32(raw[i]);
  } else {
    // E4M3 -> float32 without a table: put the 7 magnitude bits at the top of the float32
    // exponent/mantissa field (exponent bias 127 instead of 7) and multiply by 2^120. Codes with
    // exponent 0 become float32 subnormals, which the multiply turns into the exact E4M3
    // subnormal values. 0x7F / 0xFF are NaN.
    static_assert(kType == DType::kF8E4M3);
    const hn::RebindToSigned<decltype(df)> di;
    const hn::Rebind<uint8_t, decltype(df)> d8;
    const uint8_t* src = static_cast<const uint8_t*>(src_void) + offset;
    const auto k7f = hn::Set(di, 0x7F);
    const auto k80 = hn::Set(di, 0x80);
    const auto kNanBits = hn::Set(di, 0x7FC00000);
    const auto kRebias = hn::Set(df, 0x1p120f);
    for (; i + N <= n; i += N) {
      const auto code = hn::PromoteTo(di, hn::LoadU(d8, src + i));
      const auto mag = hn::And(code, k7f);
      const auto value = hn::Mul(hn::BitCast(df, hn::ShiftLeft<20>(mag)), kRebias);
      const auto sign = hn::ShiftLeft<24>(hn::And(code, k80));
      auto bits = hn::Or(hn::BitCast(di, value), sign);
      bits = hn::IfThenElse(hn::Eq(mag, k7f), kNanBits, bits);
      hn::StoreU(hn::BitCast(df, bits), df, dst + i);
    }
    for (; i < n; ++i) dst[i] = E4M3ToF32(src[i]);
  }
}

// The decode path converts in registers: Load2 turns the 2N stored weights at element `i` of a
// row into two float32 vectors. FP8 on AVX2 and better goes through float16: the 7 magnitude bits
// shifted to bit 7 form an IEEE half with exponent bias 15 instead of 7, i.e. the E4M3 value times
// 2^-8 (E4M3 subnormals become half subnormals, exact), which F16C widens in one instruction;
// kFp8Unscale = 256 is folded into the block scale. NaN codes become half NaNs.
#undef DSV3_FP8_VIA_F16  // this file is compiled once per target
#if HWY_TARGET <= HWY_AVX2 && HWY_TARGET != HWY_SCALAR
#define DSV3_FP8_VIA_F16 1
constexpr float kFp8Unscale = 256.0f;
#else
#define DSV3_FP8_VIA_F16 0
constexpr float kFp8Unscale = 1.0f;
#endif

// FP8 NaN codes (0x7F, 0xFF) seen by Load2 on the float16 route: the running maximum of
// code << 9 as 16 bits, which reaches 0xFE00 exactly when a code's 7 magnitude bits are all ones.
#if DSV3_FP8_VIA_F16
template <class DF>
using NanTracker = hn::Vec<hn::Repartition<uint16_t, DF>>;
template <class DF>
HWY_INLINE NanTracker<DF> NoNan(DF) {
  return hn::Zero(hn::Repartition<uint16_t, DF>());
}
template <class DF>
HWY_INLINE bool SawNan(DF, const NanTracker<DF>& tracker) {
  return hn::GetLane(hn::MaxOfLanes(hn::Repartition<uint16_t, DF>(), tracker)) == 0xFE00;
}
#else  // the float32 route produces NaNs itself
template <class DF>
using NanTracker = int;
template <class DF>
HWY_INLINE int NoNan(DF) {
  return 0;
}
template <class DF>
HWY_INLINE bool SawNan(DF, int) {
  return false;
}
#endif

template <DType kType, class DF>
HWY_INLINE void Load2(DF df, const void* HWY_RESTRICT row, int64_t i, hn::Vec<DF>& w0,
                      hn::Vec<DF>& w1, NanTracker<DF>& nan) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  if constexpr (kType == DType::kF32) {
    const float* p = static_cast<const float*>(row) + i;
    w0 = hn::LoadU(df, p);
    w1 = hn::LoadU(df, p + N);
  } else if constexpr (kType == DType::kBF16) {
    const hn::Rebind<hwy::bfloat16_t, DF> dbf;
    const auto* p = static_cast<const hwy::bfloat16_t*>(row) + i;
    w0 = hn::PromoteTo(df, hn::LoadU(dbf, p));
    w1 = hn::PromoteTo(df, hn::LoadU(dbf, p + N));
  } else if constexpr (kType == DType::kF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    const auto* p = static_cast<const hwy::float16_t*>(row) + i;
    w0 = hn::PromoteTo(df, hn::LoadU(dh, p));
    w1 = hn::PromoteTo(df, hn::LoadU(dh, p + N));
  } else {
    const uint8_t* p = static_cast<const uint8_t*>(row) + i;
#if DSV3_FP8_VIA_F16
    // Sign-extending the code to 16 bits and shifting left by 7 puts the magnitude at bits 7..13
    // and the sign at bit 15 (bit 14 gets a copy of the sign, cleared by the mask): three
    // instructions for 2N weights.
    const hn::Repartition<uint16_t, DF> du16;      // 2N lanes
    const hn::Repartition<int16_t, DF> di16;       // 2N lanes
    const hn::Rebind<int8_t, decltype(di16)> di8;  // 2N bytes
    const hn::Rebind<hwy::float16_t, DF> dh;       // N halves
    const hn::Half<decltype(du16)> du16h;
    const auto code =
        hn::BitCast(du16, hn::PromoteTo(di16, hn::LoadU(di8, reinterpret_cast<const int8_t*>(p))));
    const auto h = hn::And(hn::ShiftLeft<7>(code), hn::Set(du16, 0xBFFF));
    nan = hn::Max(nan, hn::ShiftLeft<9>(code));
    w0 = hn::PromoteTo(df, hn::BitCast(dh, hn::LowerHalf(du16h, h)));
    w1 = hn::PromoteTo(df, hn::BitCast(dh, hn::UpperHalf(du16h, h)));
#else
    (void)nan;
    HWY_ALIGN float tmp[2 * hn::MaxLanes(df)];
    ToF32<DType::kF8E4M3>(p, 0, 2 * N, tmp);
    w0 = hn::Load(df, tmp);
    w1 = hn::Load(df, tmp + N);
#endif
  }
}

// The block-scale row of row r (FP8), and the factor of its column block b for the decode path
// (the block scale times kFp8Unscale); 1 for other dtypes.
template <DType kType>
HWY_INLINE const float* ScaleRow(const WeightMatrix& w, int64_t r) {
  return kType == DType::kF8E4M3 ? w.scale + (r / w.block_rows) * w.scale_cols : nullptr;
}
template <DType kType>
HWY_INLINE float DecodeScale(const float* scale_row, int64_t b) {
  if constexpr (kType == DType::kF8E4M3) {
    return scale_row[b] * kFp8Unscale;
  } else {
    return 1.0f;
  }
}

HWY_INLINE float BlockScale(const WeightMatrix& w, int64_t r, int64_t c) {
  return w.scale == nullptr ? 1.0f : w.scale[(r / w.block_rows) * w.scale_cols + c / w.block_cols];
}

template <DType kType>
HWY_INLINE const void* RowPtr(const WeightMatrix& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * w.cols * static_cast<int64_t>(DTypeSize(kType));
}

// ---- decode: y = W x for one token, weights converted in registers ---------------------------

// Column blocks of the decode path: FP8 scale blocks, else 512 columns. Each block's products
// accumulate in one vector that is then folded (times the block scale) into the row's total.
HWY_INLINE int64_t DecodeBlock(const WeightMatrix& w) {
  return w.dtype == DType::kF8E4M3 ? w.block_cols : kMaxSeg;
}

// One row, one token: y = W[r] . x, converting in registers.
template <DType kType>
HWY_INLINE float MatVecRow(const WeightMatrix& w, int64_t r, const float* HWY_RESTRICT x) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const void* row = RowPtr<kType>(w, r);
  const float* srow = ScaleRow<kType>(w, r);
  auto total = hn::Zero(df);
  NanTracker<decltype(df)> nan = NoNan(df);
  float tail = 0;
  const int64_t block = DecodeBlock(w);
  for (int64_t c0 = 0, b = 0; c0 < w.cols; c0 += block, ++b) {
    const int64_t c1 = std::min(w.cols, c0 + block);
    auto part = hn::Zero(df);
    int64_t c = c0;
    for (; c + 2 * N <= c1; c += 2 * N) {
      decltype(part) w0, w1;
      Load2<kType>(df, row, c, w0, w1, nan);
      part = hn::MulAdd(w1, hn::LoadU(df, x + c + N), hn::MulAdd(w0, hn::LoadU(df, x + c), part));
    }
    total = hn::MulAdd(part, hn::Set(df, DecodeScale<kType>(srow, b)), total);
    if (c < c1) {  // ragged end of a block: plain code
      HWY_ALIGN float deq[2 * hn::MaxLanes(df)];
      ToF32<kType>(row, c, c1 - c, deq);
      float t = 0;
      for (int64_t k = 0; k < c1 - c; ++k) t += deq[k] * x[c + k];
      tail += t * BlockScale(w, r, c0);
    }
  }
  if (kType == DType::kF8E4M3 && SawNan(df, nan)) return NAN;
  return hn::GetLane(hn::SumOfLanes(df, total)) + tail;
}

// Four rows at once share every activation load. While it streams its four rows, it prefetches
// the same columns of the next four, which follow in memory: rows are often only a few KiB long,
// too short for the hardware prefetcher to ramp up on each. Same arithmetic, in the same order,
// as MatVecRow. Only for matrices whose blocks are whole vectors (see MatVecRowsT).
template <DType kType>
HWY_INLINE void MatVec4Rows(const WeightMatrix& w, int64_t r, const float* HWY_RESTRICT x,
                            float* HWY_RESTRICT y) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t esize = static_cast<int64_t>(DTypeSize(kType));
  const uint8_t* r0 = static_cast<const uint8_t*>(RowPtr<kType>(w, r));
  const int64_t stride = w.cols * esize;  // bytes per row
  const uint8_t* r1 = r0 + stride;
  const uint8_t* r2 = r1 + stride;
  const uint8_t* r3 = r2 + stride;
  const int64_t ahead = 4 * stride;
  const float* s0 = ScaleRow<kType>(w, r);
  const float* s1 = ScaleRow<kType>(w, r + 1);
  const float* s2 = ScaleRow<kType>(w, r + 2);
  const float* s3 = ScaleRow<kType>(w, r + 3);
  auto t0 = hn::Zero(df), t1 = t0, t2 = t0, t3 = t0;
  NanTracker<decltype(df)> n0 = NoNan(df);
  auto n1 = n0, n2 = n0, n3 = n0;
  const int64_t block = DecodeBlock(w);
  for (int64_t c0 = 0, b = 0; c0 < w.cols; c0 += block, ++b) {
    const int64_t c1 = std::min(w.cols, c0 + block);
    auto p0 = hn::Zero(df), p1 = p0, p2 = p0, p3 = p0;
    for (int64_t c = c0; c < c1; c += 2 * N) {
      const int64_t byte = c * esize;
      if ((byte & 63) == 0) {  // one prefetch per cache line of each next row
        PrefetchL2(r0 + ahead + byte);
        PrefetchL2(r1 + ahead + byte);
        PrefetchL2(r2 + ahead + byte);
        PrefetchL2(r3 + ahead + byte);
      }
      const auto x0 = hn::LoadU(df, x + c);
      const auto x1 = hn::LoadU(df, x + c + N);
      decltype(p0) w0, w1;
      Load2<kType>(df, r0, c, w0, w1, n0);
      p0 = hn::MulAdd(w1, x1, hn::MulAdd(w0, x0, p0));
      Load2<kType>(df, r1, c, w0, w1, n1);
      p1 = hn::MulAdd(w1, x1, hn::MulAdd(w0, x0, p1));
      Load2<kType>(df, r2, c, w0, w1, n2);
      p2 = hn::MulAdd(w1, x1, hn::MulAdd(w0, x0, p2));
      Load2<kType>(df, r3, c, w0, w1, n3);
      p3 = hn::MulAdd(w1, x1, hn::MulAdd(w0, x0, p3));
    }
    t0 = hn::MulAdd(p0, hn::Set(df, DecodeScale<kType>(s0, b)), t0);
    t1 = hn::MulAdd(p1, hn::Set(df, DecodeScale<kType>(s1, b)), t1);
    t2 = hn::MulAdd(p2, hn::Set(df, DecodeScale<kType>(s2, b)), t2);
    t3 = hn::MulAdd(p3, hn::Set(df, DecodeScale<kType>(s3, b)), t3);
  }
  y[0] = hn::GetLane(hn::SumOfLanes(df, t0));
  y[1] = hn::GetLane(hn::SumOfLanes(df, t1));
  y[2] = hn::GetLane(hn::SumOfLanes(df, t2));
  y[3] = hn::GetLane(hn::SumOfLanes(df, t3));
  if (kType == DType::kF8E4M3) {
    if (SawNan(df, n0)) y[0] = NAN;
    if (SawNan(df, n1)) y[1] = NAN;
    if (SawNan(df, n2)) y[2] = NAN;
    if (SawNan(df, n3)) y[3] = NAN;
  }
}

// total[t][i] += scale[i] * (tile row i . token t) over one column block of `len`, for kT
// tokens: each tile vector is loaded once for all of them. Every (token, row) sum runs over the
// columns in the same order as MatVec4Rows', so the result does not depend on kT.
template <int kT, class D, class V>
HWY_INLINE void TileDots(D df, const float* HWY_RESTRICT tile, const float* HWY_RESTRICT x,
                         int64_t x_stride, int64_t len, const V (&scale)[4], V (*total)[4]) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  V p[kT][4];
  for (int t = 0; t < kT; ++t) {
    for (int i = 0; i < 4; ++i) p[t][i] = hn::Zero(df);
  }
  for (int64_t c = 0; c < len; c += 2 * N) {
    V w0[4], w1[4];
    for (int i = 0; i < 4; ++i) {
      w0[i] = hn::Load(df, tile + i * kMaxSeg + c);
      w1[i] = hn::Load(df, tile + i * kMaxSeg + c + N);
    }
    for (int t = 0; t < kT; ++t) {
      const V x0 = hn::LoadU(df, x + t * x_stride + c);
      const V x1 = hn::LoadU(df, x + t * x_stride + c + N);
      for (int i = 0; i < 4; ++i) p[t][i] = hn::MulAdd(w1[i], x1, hn::MulAdd(w0[i], x0, p[t][i]));
    }
  }
  for (int t = 0; t < kT; ++t) {
    for (int i = 0; i < 4; ++i) total[t][i] = hn::MulAdd(p[t][i], scale[i], total[t][i]);
  }
}

// A few tokens (speculative verification): each block of four rows is converted once into an L1
// tile and then applied to every token with exactly MatVec4Rows' arithmetic, so every token's
// result is bit-identical to decoding it alone while the weights are read once for all of them.
template <DType kType>
HWY_INLINE void MatVec4RowsMulti(const WeightMatrix& w, int64_t r, const float* HWY_RESTRICT x,
                                 int64_t x_stride, int64_t T, float* HWY_RESTRICT y,
                                 int64_t y_stride) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t block = DecodeBlock(w);
  HWY_ALIGN float tile[4 * kMaxSeg];
  V total[kMaxDecodeTokens][4];
  NanTracker<decltype(df)> nan[4];
  for (int i = 0; i < 4; ++i) nan[i] = NoNan(df);
  for (int64_t t = 0; t < T; ++t) {
    for (int i = 0; i < 4; ++i) total[t][i] = hn::Zero(df);
  }
  const float* srow[4] = {ScaleRow<kType>(w, r), ScaleRow<kType>(w, r + 1),
                          ScaleRow<kType>(w, r + 2), ScaleRow<kType>(w, r + 3)};
  for (int64_t c0 = 0, b = 0; c0 < w.cols; c0 += block, ++b) {
    const int64_t len = std::min(w.cols, c0 + block) - c0;
    for (int i = 0; i < 4; ++i) {
      const void* row = RowPtr<kType>(w, r + i);
      for (int64_t c = 0; c < len; c += 2 * N) {
        V w0, w1;
        Load2<kType>(df, row, c0 + c, w0, w1, nan[i]);
        hn::Store(w0, df, tile + i * kMaxSeg + c);
        hn::Store(w1, df, tile + i * kMaxSeg + c + N);
      }
    }
    V scale[4];
    for (int i = 0; i < 4; ++i) scale[i] = hn::Set(df, DecodeScale<kType>(srow[i], b));
    // Up to four tokens at a time, so the tile vectors are loaded once for all of them while
    // the sums stay in registers.
    for (int64_t t = 0; t < T; t += 4) {
      const float* xt = x + t * x_stride + c0;
      switch (std::min<int64_t>(4, T - t)) {
        case 1:
          TileDots<1>(df, tile, xt, x_stride, len, scale, &total[t]);
          break;
        case 2:
          TileDots<2>(df, tile, xt, x_stride, len, scale, &total[t]);
          break;
        case 3:
          TileDots<3>(df, tile, xt, x_stride, len, scale, &total[t]);
          break;
        default:
          TileDots<4>(df, tile, xt, x_stride, len, scale, &total[t]);
      }
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int i = 0; i < 4; ++i) {
      y[t * y_stride + i] = kType == DType::kF8E4M3 && SawNan(df, nan[i])
                                ? NAN
                                : hn::GetLane(hn::SumOfLanes(df, total[t][i]));
    }
  }
}

// ---- FP8 decode on AVX-512 with VBMI: E4M3 codes to float32 by table lookup ----------------
//
// Per 64 codes, two vpermi2b look up the high and the low byte of each code's value as BF16 (two
// tables of the 128 magnitudes; one vpternlogd adds the sign bit back); byte unpacks pair them
// into BF16 words, and a shift (even words) or a mask (odd words) makes each the float32 it is:
// the exact E4M3 values, NaN codes as NaN, in 10 instructions per 64 weights against about 20 on
// the float16 route (measured in L2 on one Zen 4 core: 20 against 14 GB/s of codes). The unpacks
// work within 128-bit lanes, so lane k of vector q (q < 4) holds codes 16k + 8 (q / 2) + (q % 2)
// + 2d, d < 4; PermuteActivations puts the activations in the same order once per call. Two
// accumulators per row (vectors 0, 2 and 1, 3), summed at the end of each scale block and folded
// into the row's total times the block scale. A token's result depends neither on how many tokens
// share the call nor on how rows are grouped.
#if HWY_TARGET == HWY_AVX3
#define DSV3_VBMI __attribute__((target(HWY_TARGET_STR ",avx512vbmi")))

constexpr int64_t kLookupGroup = 64;  // codes per conversion step

bool UseFp8Lookup(const WeightMatrix& w) {
  return w.dtype == DType::kF8E4M3 && Fp8LookupEnabled() && w.cols % kLookupGroup == 0 &&
         w.block_cols % kLookupGroup == 0 && w.block_cols <= kMaxSeg;
}

// The BF16 bits of the E4M3 magnitudes 0..127 (0x7F: a quiet NaN), high and low bytes.
struct Fp8Bf16Table {
  alignas(64) uint8_t hi[128];
  alignas(64) uint8_t lo[128];
};
const Fp8Bf16Table& Fp8Table() {
  static const Fp8Bf16Table table = [] {
    Fp8Bf16Table t;
    for (int m = 0; m < 128; ++m) {
      const uint32_t bits = BitsFromF32(E4M3ToF32(static_cast<uint8_t>(m)));  // exact in BF16
      t.hi[m] = static_cast<uint8_t>(bits >> 24);
      t.lo[m] = static_cast<uint8_t>(bits >> 16);
    }
    return t;
  }();
  return table;
}

struct Fp8Lookup {
  __m512i hi0, hi1, lo0, lo1;
};

// 64 codes at p -> v[0..3], float32, in the lane order described above.
DSV3_VBMI HWY_INLINE void Fp8Group(const uint8_t* HWY_RESTRICT p, const Fp8Lookup& t,
                                   __m512 (&v)[4]) {
  const __m512i code = _mm512_loadu_si512(p);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, code, t.lo1);
  __m512i hi = _mm512_permutex2var_epi8(t.hi0, code, t.hi1);
  hi = _mm512_ternarylogic_epi32(hi, code, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
  const __m512i a = _mm512_unpacklo_epi8(lo, hi), b = _mm512_unpackhi_epi8(lo, hi);
  const __m512i odd = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  v[0] = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
  v[1] = _mm512_castsi512_ps(_mm512_and_si512(a, odd));
  v[2] = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
  v[3] = _mm512_castsi512_ps(_mm512_and_si512(b, odd));
}

// out[64 g + 16 q + 4 k + d] = x[64 g + 16 k + 8 (q / 2) + (q % 2) + 2 d]: Fp8Group's order.
DSV3_VBMI void PermuteActivations(const float* HWY_RESTRICT x, int64_t cols,
                                  float* HWY_RESTRICT out) {
  // Y_k = x[64 g + 16 k ..] with lane q holding what lane k of output vector q needs; then a 4x4
  // transpose of 128-bit lanes.
  const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  for (int64_t g = 0; g < cols; g += kLookupGroup) {
    __m512 y[4];
    HWY_UNROLL(4)
    for (int k = 0; k < 4; ++k) y[k] = _mm512_permutexvar_ps(idx, _mm512_loadu_ps(x + g + 16 * k));
    const __m512 t0 = _mm512_shuffle_f32x4(y[0], y[1], 0x44),
                 t1 = _mm512_shuffle_f32x4(y[0], y[1], 0xEE);
    const __m512 t2 = _mm512_shuffle_f32x4(y[2], y[3], 0x44),
                 t3 = _mm512_shuffle_f32x4(y[2], y[3], 0xEE);
    _mm512_storeu_ps(out + g, _mm512_shuffle_f32x4(t0, t2, 0x88));
    _mm512_storeu_ps(out + g + 16, _mm512_shuffle_f32x4(t0, t2, 0xDD));
    _mm512_storeu_ps(out + g + 32, _mm512_shuffle_f32x4(t1, t3, 0x88));
    _mm512_storeu_ps(out + g + 48, _mm512_shuffle_f32x4(t1, t3, 0xDD));
  }
}

// One group's products: acc[0] += v0 x0 + v2 x2, acc[1] += v1 x1 + v3 x3.
DSV3_VBMI HWY_INLINE void FmaGroup(const __m512 (&v)[4], const float* HWY_RESTRICT x,
                                   __m512 (&acc)[2]) {
  acc[0] = _mm512_fmadd_ps(v[0], _mm512_loadu_ps(x), acc[0]);
  acc[1] = _mm512_fmadd_ps(v[1], _mm512_loadu_ps(x + 16), acc[1]);
  acc[0] = _mm512_fmadd_ps(v[2], _mm512_loadu_ps(x + 32), acc[0]);
  acc[1] = _mm512_fmadd_ps(v[3], _mm512_loadu_ps(x + 48), acc[1]);
}

// The end of a scale block: total += (acc[0] + acc[1]) * scale.
DSV3_VBMI HWY_INLINE void FoldBlock(const __m512 (&acc)[2], float scale, __m512& total) {
  total = _mm512_fmadd_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_set1_ps(scale), total);
}

// kRows rows from r (1 or 4) for T tokens, whose permuted activations lie at xp + t * cols; row
// r + i of token t goes to y[t * y_stride + i]. One token converts in registers, with the next
// kRows rows prefetched; several convert each block once into an L1 tile and apply it to every
// token with the same operations in the same order.
template <int kRows>
DSV3_VBMI HWY_NOINLINE void Fp8LookupRows(const WeightMatrix& w, int64_t r,
                                          const float* HWY_RESTRICT xp, int64_t T,
                                          float* HWY_RESTRICT y, int64_t y_stride) {
  const hn::ScalableTag<float> df;
  const int64_t cols = w.cols, block = w.block_cols;
  const Fp8Bf16Table& table = Fp8Table();
  const Fp8Lookup lookup{_mm512_load_si512(table.hi), _mm512_load_si512(table.hi + 64),
                         _mm512_load_si512(table.lo), _mm512_load_si512(table.lo + 64)};
  const uint8_t* rows[kRows];
  const float* srow[kRows];
  HWY_UNROLL(4)
  for (int i = 0; i < kRows; ++i) {
    rows[i] = static_cast<const uint8_t*>(w.data) + (r + i) * cols;
    srow[i] = ScaleRow<DType::kF8E4M3>(w, r + i);
  }
  __m512 total[kMaxDecodeTokens][kRows];
  for (int64_t t = 0; t < T; ++t) {
    HWY_UNROLL(4)
    for (int i = 0; i < kRows; ++i) total[t][i] = _mm512_setzero_ps();
  }
  HWY_ALIGN float tile[kRows][kMaxSeg];  // converted block, several tokens
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += block, ++b) {
    const int64_t c1 = std::min(cols, c0 + block);
    if (T == 1) {
      __m512 acc[kRows][2];
      HWY_UNROLL(4)
      for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
      for (int64_t c = c0; c < c1; c += kLookupGroup) {
        if (kRows > 1) {
          HWY_UNROLL(4)
          for (int i = 0; i < kRows; ++i) PrefetchL2(rows[i] + kRows * cols + c);
        }
        HWY_UNROLL(4)
        for (int i = 0; i < kRows; ++i) {
          __m512 v[4];
          Fp8Group(rows[i] + c, lookup, v);
          FmaGroup(v, xp + c, acc[i]);
        }
      }
      HWY_UNROLL(4)
      for (int i = 0; i < kRows; ++i) FoldBlock(acc[i], srow[i][b], total[0][i]);
      continue;
    }
    HWY_UNROLL(4)
    for (int i = 0; i < kRows; ++i) {
      for (int64_t c = c0; c < c1; c += kLookupGroup) {
        __m512 v[4];
        Fp8Group(rows[i] + c, lookup, v);
        HWY_UNROLL(4)
        for (int q = 0; q < 4; ++q) _mm512_store_ps(tile[i] + (c - c0) + 16 * q, v[q]);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = xp + t * cols;
      __m512 acc[kRows][2];
      HWY_UNROLL(4)
      for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
      for (int64_t c = c0; c < c1; c += kLookupGroup) {
        HWY_UNROLL(4)
        for (int i = 0; i < kRows; ++i) {
          __m512 v[4];
          HWY_UNROLL(4)
          for (int q = 0; q < 4; ++q) v[q] = _mm512_load_ps(tile[i] + (c - c0) + 16 * q);
          FmaGroup(v, xt + c, acc[i]);
        }
      }
      HWY_UNROLL(4)
      for (int i = 0; i < kRows; ++i) FoldBlock(acc[i], srow[i][b], total[t][i]);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    HWY_UNROLL(4)
    for (int i = 0; i < kRows; ++i) {
      y[t * y_stride + i] = hn::GetLane(hn::SumOfLanes(df, hn::Vec512<float>{total[t][i]}));
    }
  }
}

// Rows [r0, r1) for T < kGemmMinTokens tokens (UseFp8Lookup(w)).
DSV3_VBMI void Fp8LookupRowsT(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x,
                              int64_t x_stride, int64_t T, float* y, int64_t y_stride) {
  const int64_t cols = w.cols;
  thread_local AlignedArray<float> permuted;  // [T][cols], grows once per thread
  const size_t need = static_cast<size_t>(kMaxDecodeTokens * cols);
  if (permuted.size() < need) permuted.Resize(need, false);
  for (int64_t t = 0; t < T; ++t) {
    PermuteActivations(x + t * x_stride, cols, permuted.data() + t * cols);
  }
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) Fp8LookupRows<4>(w, r, permuted.data(), T, y + (r - r0), y_stride);
  for (; r < r1; ++r) Fp8LookupRows<1>(w, r, permuted.data(), T, y + (r - r0), y_stride);
}
#endif  // HWY_TARGET == HWY_AVX3

// Rows [r0, r1) for T < kGemmMinTokens tokens; row r's result is written to y[t][r - r0].
template <DType kType>
void MatVecRowsT(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                 int64_t T, float* y, int64_t y_stride) {
#if HWY_TARGET == HWY_AVX3
  if (kType == DType::kF8E4M3 && UseFp8Lookup(w)) {
    return Fp8LookupRowsT(w, r0, r1, x, x_stride, T, y, y_stride);
  }
#endif
  const int64_t N = static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>()));
  // The 4-row paths need every column block to be whole vectors; otherwise rows go one by one.
  const int64_t block = DecodeBlock(w);
  const bool whole = block % (2 * N) == 0 && w.cols % (2 * N) == 0 && block <= kMaxSeg;
  // One BF16 token reads its rows one at a time: a single sequential stream, which the hardware
  // prefetcher follows better than four interleaved ones with software prefetches. Measured from
  // DRAM on Zen 4, one core / two: AVX3 26-27 / 42-47 GB/s against 21-22 / 31-33, AVX2 20.8 /
  // 41.7 against 19.6 / 30.6 (there one row's chain of multiply-adds nearly limits it: 22 GB/s
  // from L2). The same arithmetic either way. FP8 is bound by its conversion and keeps the
  // shared activation loads of four rows.
  const bool rows_by_four = whole && !(kType == DType::kBF16 && T == 1);
  int64_t r = r0;
  if (rows_by_four) {
    for (; r + 4 <= r1; r += 4) {
      if (T == 1) {
        MatVec4Rows<kType>(w, r, x, y + (r - r0));
      } else {
        MatVec4RowsMulti<kType>(w, r, x, x_stride, T, y + (r - r0), y_stride);
      }
    }
  }
  for (; r < r1; ++r) {
    for (int64_t t = 0; t < T; ++t)
      y[t * y_stride + r - r0] = MatVecRow<kType>(w, r, x + t * x_stride);
  }
}

// ---- prefill: Y = X W^T for many tokens ------------------------------------------------------

// kRowTile weight rows are dequantized in full (scales applied) into a per-thread tile, then
// multiplied with the tokens of an L2-sized token chunk, 4 rows x 4 tokens at a time with 16
// vector accumulators and one horizontal sum per output (DotTile).
template <DType kType>
void DequantRowT(const WeightMatrix& w, int64_t r, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  ToF32<kType>(RowPtr<kType>(w, r), 0, w.cols, out);
  if (w.scale == nullptr) return;
  for (int64_t c0 = 0; c0 < w.cols; c0 += w.block_cols) {
    const int64_t c1 = std::min(w.cols, c0 + w.block_cols);
    const auto s = hn::Set(df, BlockScale(w, r, c0));
    int64_t c = c0;
    for (; c + N <= c1; c += N) hn::StoreU(hn::Mul(hn::LoadU(df, out + c), s), df, out + c);
    for (; c < c1; ++c) out[c] *= BlockScale(w, r, c0);
  }
}

template <DType kType>
void GemmRowsT(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
               int64_t T, float* y, int64_t y_stride) {
  const hn::ScalableTag<float> df;
  thread_local std::vector<float> tile;  // [kRowTile, cols], grows once per thread
  if (tile.size() < static_cast<size_t>(kRowTile * w.cols)) tile.resize(kRowTile * w.cols);
  // Tokens per chunk: their rows (about 1 MiB) stay in L2 while every row tile passes over them.
  const int64_t chunk = std::max<int64_t>(kTokTile, (1 << 20) / (w.cols * 4) / kTokTile * kTokTile);
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t t1 = std::min(T, t0 + chunk);
    for (int64_t rb = r0; rb < r1; rb += kRowTile) {
      const int64_t nr = std::min(kRowTile, r1 - rb);
      for (int64_t i = 0; i < kRowTile; ++i) {
        DequantRowT<kType>(w, rb + std::min(i, nr - 1), tile.data() + i * w.cols);
      }
      // Groups of 4 tokens, then the tokens left over one by one; row i of token t goes to y[t][i].
      int64_t t = t0;
      for (; t + kTokTile <= t1; t += kTokTile) {
        float* yt = y + t * y_stride + (rb - r0);
        DotTile<kRowTile, kTokTile>(df, tile.data(), w.cols, x + t * x_stride, x_stride, w.cols, nr,
                                    [&](int64_t i, int j, float s) { yt[j * y_stride + i] = s; });
      }
      for (; t < t1; ++t) {
        float* yt = y + t * y_stride + (rb - r0);
        DotTile<kRowTile, 1>(df, tile.data(), w.cols, x + t * x_stride, 0, w.cols, nr,
                             [&](int64_t i, int, float s) { yt[i] = s; });
      }
    }
  }
}

template <DType kType>
void MatMulRowsT(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                 int64_t T, float* y, int64_t y_stride, MatMulOptions options) {
  if (options.path == MatMulPath::kPerToken) {
    for (int64_t t = 0; t < T; t += kMaxDecodeTokens) {
      MatVecRowsT<kType>(w, r0, r1, x + t * x_stride, x_stride, std::min(kMaxDecodeTokens, T - t),
                         y + t * y_stride, y_stride);
    }
  } else if (T < kGemmMinTokens) {
    MatVecRowsT<kType>(w, r0, r1, x, x_stride, T, y, y_stride);
  } else if (HWY_TARGET == HWY_AVX3 &&
             AmxMatMulRows(w, r0, r1, x, x_stride, T, y, y_stride, options.precision)) {
    // done on AMX tiles
  } else {
    GemmRowsT<kType>(w, r0, r1, x, x_stride, T, y, y_stride);
  }
}

// f(std::integral_constant<DType, d>()) for w's dtype d: the kernel templates' instantiation per
// weight dtype, in one place. `what` names the caller in the error for other dtypes.
template <typename F>
HWY_INLINE void ForWeightType(const WeightMatrix& w, const char* what, F&& f) {
  switch (w.dtype) {
    case DType::kF32:
      return f(std::integral_constant<DType, DType::kF32>());
    case DType::kBF16:
      return f(std::integral_constant<DType, DType::kBF16>());
    case DType::kF16:
      return f(std::integral_constant<DType, DType::kF16>());
    case DType::kF8E4M3:
      return f(std::integral_constant<DType, DType::kF8E4M3>());
    default:
      HWY_ABORT("%s: unsupported weight dtype %s", what, DTypeName(w.dtype));
  }
}

void MatMulRowsImpl(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                    int64_t T, float* y, int64_t y_stride, MatMulOptions options) {
  ForWeightType(w, "MatMul", [&](auto type) {
    MatMulRowsT<decltype(type)::value>(w, r0, r1, x, x_stride, T, y, y_stride, options);
  });
}

// End of the column segment starting at c0: at most kMaxSeg wide, never crossing a scale block.
HWY_INLINE int64_t SegmentEnd(const WeightMatrix& w, int64_t c0) {
  int64_t c1 = std::min(w.cols, c0 + kMaxSeg);
  if (w.scale != nullptr) c1 = std::min(c1, (c0 / w.block_cols + 1) * w.block_cols);
  return c1;
}

// y = a * W[r] (accumulate: y += a * W[r]), dequantized, segment by segment.
template <DType kType>
void ConvertRowT(const WeightMatrix& w, int64_t r, float a, float* y, bool accumulate) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  HWY_ALIGN float seg[kMaxSeg];
  for (int64_t c0 = 0; c0 < w.cols;) {
    const int64_t c1 = SegmentEnd(w, c0), len = c1 - c0;
    ToF32<kType>(RowPtr<kType>(w, r), c0, len, seg);
    const float s = a * BlockScale(w, r, c0);
    const auto vs = hn::Set(df, s);
    float* out = y + c0;
    int64_t i = 0;
    if (accumulate) {
      for (; i + N <= len; i += N) {
        hn::StoreU(hn::MulAdd(vs, hn::Load(df, seg + i), hn::LoadU(df, out + i)), df, out + i);
      }
      for (; i < len; ++i) out[i] += s * seg[i];
    } else {
      for (; i + N <= len; i += N) hn::StoreU(hn::Mul(vs, hn::Load(df, seg + i)), df, out + i);
      for (; i < len; ++i) out[i] = s * seg[i];
    }
    c0 = c1;
  }
}

// y += sum_r x[r - r0] W[r] over rows [r0, r1): four rows per pass over y, each segment of the
// four dequantized first. The same operations in the same order as ConvertRowT row by row.
template <DType kType>
void TransposedRowsT(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, float* y) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  HWY_ALIGN float seg[4][kMaxSeg];
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    for (int64_t c0 = 0; c0 < w.cols;) {
      const int64_t c1 = SegmentEnd(w, c0), len = c1 - c0;
      float f[4];
      for (int j = 0; j < 4; ++j) {
        ToF32<kType>(RowPtr<kType>(w, r + j), c0, len, seg[j]);
        f[j] = x[r + j - r0] * BlockScale(w, r + j, c0);
      }
      const auto f0 = hn::Set(df, f[0]), f1 = hn::Set(df, f[1]);
      const auto f2 = hn::Set(df, f[2]), f3 = hn::Set(df, f[3]);
      float* out = y + c0;
      int64_t i = 0;
      for (; i + N <= len; i += N) {
        auto acc = hn::MulAdd(f0, hn::Load(df, seg[0] + i), hn::LoadU(df, out + i));
        acc = hn::MulAdd(f1, hn::Load(df, seg[1] + i), acc);
        acc = hn::MulAdd(f2, hn::Load(df, seg[2] + i), acc);
        hn::StoreU(hn::MulAdd(f3, hn::Load(df, seg[3] + i), acc), df, out + i);
      }
      for (; i < len; ++i) {
        for (int j = 0; j < 4; ++j) out[i] += f[j] * seg[j][i];
      }
      c0 = c1;
    }
  }
  for (; r < r1; ++r) ConvertRowT<kType>(w, r, x[r - r0], y, true);
}

void TransposedRowsImpl(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, float* y) {
  ForWeightType(w, "MatVecTransposedRows",
                [&](auto type) { TransposedRowsT<decltype(type)::value>(w, r0, r1, x, y); });
}

void ConvertRowImpl(const WeightMatrix& w, int64_t r, float a, float* y, bool accumulate) {
  ForWeightType(w, "ConvertRow",
                [&](auto type) { ConvertRowT<decltype(type)::value>(w, r, a, y, accumulate); });
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv3::kernels {

HWY_EXPORT(MatMulRowsImpl);
HWY_EXPORT(ConvertRowImpl);
HWY_EXPORT(TransposedRowsImpl);
HWY_EXPORT(TargetNameImpl);

uint64_t WeightMatrix::bytes() const {
  uint64_t n = static_cast<uint64_t>(rows * cols) * DTypeSize(dtype);
  if (scale != nullptr)
    n += static_cast<uint64_t>((rows + block_rows - 1) / block_rows) * scale_cols * 4;
  return n;
}

void MatMulRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                int64_t T, float* y, int64_t y_stride, const MatMulOptions& options) {
  HWY_DYNAMIC_DISPATCH(MatMulRowsImpl)(w, r0, r1, x, x_stride, T, y, y_stride, options);
}

void MatMul(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
            int64_t y_stride, const MatMulOptions& options) {
  // On AMX a thread prepares the activations of all its tokens (and converts its rows once per
  // 64 of them): with a prompt's worth of tokens, threads take token ranges over all rows, so
  // that no two prepare the same activations (split by rows, each would prepare all of them).
  if (options.path == MatMulPath::kAuto && T >= 2 * kAmxTokenGrain && AmxHandles(w)) {
    ParallelFor(T, kAmxTokenGrain, [&](int64_t t0, int64_t t1, int) {
      HWY_DYNAMIC_DISPATCH(MatMulRowsImpl)
      (w, 0, w.rows, x + t0 * x_stride, x_stride, t1 - t0, y + t0 * y_stride, y_stride, options);
    });
    return;
  }
  ParallelFor(w.rows, /*grain=*/4, [&](int64_t r0, int64_t r1, int) {
    HWY_DYNAMIC_DISPATCH(MatMulRowsImpl)
    (w, r0, r1, x, x_stride, T, y + r0, y_stride, options);
  });
}

void MatVecTransposedRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, float* y) {
  HWY_DYNAMIC_DISPATCH(TransposedRowsImpl)(w, r0, r1, x, y);
}

void DequantRow(const WeightMatrix& w, int64_t r, float* out) {
  HWY_DYNAMIC_DISPATCH(ConvertRowImpl)(w, r, 1.0f, out, false);
}

const char* DispatchedTargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

namespace {
bool CpuHasAvx512Vbmi() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (c & (1u << 1)) != 0;
#else
  return false;
#endif
}
std::atomic<bool> g_fp8_lookup_off{false};
}  // namespace

bool Fp8LookupEnabled() {
  static const bool supported = CpuHasAvx512Vbmi();
  return supported && !g_fp8_lookup_off.load(std::memory_order_relaxed);
}

void SetFp8LookupEnabled(bool enabled) { g_fp8_lookup_off.store(!enabled); }

std::unique_ptr<Fp8Weights> QuantizeFp8Blocks(const WeightMatrix& w) {
  constexpr int64_t kBlock = 128;
  constexpr float kE4M3Largest = 448.0f;
  const int64_t rows = w.rows, cols = w.cols;
  const int64_t sr = (rows + kBlock - 1) / kBlock, sc = (cols + kBlock - 1) / kBlock;
  auto q = std::make_unique<Fp8Weights>();
  q->codes.resize(static_cast<size_t>(rows * cols));
  q->scales.resize(static_cast<size_t>(sr * sc));
  ParallelFor(sr, 1, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> band(static_cast<size_t>(kBlock * cols));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kBlock, n = std::min(kBlock, rows - r0);
      for (int64_t i = 0; i < n; ++i) DequantRow(w, r0 + i, band.data() + i * cols);
      float* scale = q->scales.data() + b * sc;
      for (int64_t j = 0; j < sc; ++j) {
        float amax = 0;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t c = j * kBlock; c < std::min(cols, (j + 1) * kBlock); ++c)
            amax = std::max(amax, std::fabs(band[i * cols + c]));
        }
        scale[j] = amax / kE4M3Largest;
        if (scale[j] == 0) scale[j] = 1.0f;  // all zero, or so small that amax / 448 underflows
      }
      for (int64_t i = 0; i < n; ++i) {
        uint8_t* dst = q->codes.data() + (r0 + i) * cols;
        for (int64_t c = 0; c < cols; ++c)
          dst[c] = F32ToE4M3(band[i * cols + c] / scale[c / kBlock]);
      }
    }
  });
  q->matrix = {DType::kF8E4M3, rows, cols, q->codes.data(), q->scales.data(), kBlock, kBlock, sc};
  return q;
}

const char* MatMulPrecisionName(MatMulPrecision precision) {
  return precision == MatMulPrecision::kBF16 ? "bf16" : "f32";
}

std::optional<MatMulPrecision> MatMulPrecisionFromName(std::string_view name) {
  if (name == "f32") return MatMulPrecision::kF32;
  if (name == "bf16") return MatMulPrecision::kBF16;
  return std::nullopt;
}

}  // namespace dsv3::kernels
#endif  // HWY_ONCE
