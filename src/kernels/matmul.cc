// Weight-times-activation products. One tile of up to 4 weight rows x kMaxSeg columns is converted
// to float32 (FP8 through a bit rebias, BF16/F16 through widening) and then multiplied with every
// token of the current token tile, so each converted weight is reused across the batch.
// FP8 block scales multiply the per-block partial sums, never the individual weights.

#include "kernels/matmul.h"

#include <algorithm>

#include "core/parallel.h"

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/matmul.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dsv3::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kRowTile = 4;     // weight rows converted together
constexpr int64_t kMaxSeg = 512;    // columns converted at once (a scale block never straddles)
constexpr int64_t kTokenTile = 32;  // tokens sharing one pass over the weights

// dst[i] = float(src[offset + i]) for i < n (no scale).
template <DType kType>
HWY_INLINE void ToF32(const void* HWY_RESTRICT src_void, int64_t offset, int64_t n,
                      float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  if constexpr (kType == DType::kF32) {
    const float* src = static_cast<const float*>(src_void) + offset;
    for (; i + N <= n; i += N) hn::Store(hn::LoadU(df, src + i), df, dst + i);
    for (; i < n; ++i) dst[i] = src[i];
  } else if constexpr (kType == DType::kBF16) {
    const hn::Rebind<hwy::bfloat16_t, decltype(df)> dbf;
    const auto* src = static_cast<const hwy::bfloat16_t*>(src_void) + offset;
    for (; i + N <= n; i += N) hn::Store(hn::PromoteTo(df, hn::LoadU(dbf, src + i)), df, dst + i);
    const uint16_t* raw = static_cast<const uint16_t*>(src_void) + offset;
    for (; i < n; ++i) dst[i] = BF16ToF32(raw[i]);
  } else if constexpr (kType == DType::kF16) {
    const hn::Rebind<hwy::float16_t, decltype(df)> dh;
    const auto* src = static_cast<const hwy::float16_t*>(src_void) + offset;
    for (; i + N <= n; i += N) hn::Store(hn::PromoteTo(df, hn::LoadU(dh, src + i)), df, dst + i);
    const uint16_t* raw = static_cast<const uint16_t*>(src_void) + offset;
    for (; i < n; ++i) dst[i] = F16ToF32(raw[i]);
  } else {
    // E4M3 -> float32 without a table: put the 7 magnitude bits at the top of the float32
    // mantissa/exponent field (exponent bias 127 instead of 7) and multiply by 2^120. Codes with
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
      hn::Store(hn::BitCast(df, bits), df, dst + i);
    }
    for (; i < n; ++i) dst[i] = E4M3ToF32(src[i]);
  }
}

// Four dot products of `len` elements sharing the x loads. Rows are kMaxSeg apart in `tile`.
HWY_INLINE void Dot4(const float* HWY_RESTRICT tile, const float* HWY_RESTRICT x, int64_t len,
                     float out[4]) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= len; i += N) {
    const auto xv = hn::LoadU(df, x + i);
    a0 = hn::MulAdd(hn::Load(df, tile + i), xv, a0);
    a1 = hn::MulAdd(hn::Load(df, tile + kMaxSeg + i), xv, a1);
    a2 = hn::MulAdd(hn::Load(df, tile + 2 * kMaxSeg + i), xv, a2);
    a3 = hn::MulAdd(hn::Load(df, tile + 3 * kMaxSeg + i), xv, a3);
  }
  out[0] = hn::GetLane(hn::SumOfLanes(df, a0));
  out[1] = hn::GetLane(hn::SumOfLanes(df, a1));
  out[2] = hn::GetLane(hn::SumOfLanes(df, a2));
  out[3] = hn::GetLane(hn::SumOfLanes(df, a3));
  for (; i < len; ++i) {
    for (int k = 0; k < 4; ++k) out[k] += tile[k * kMaxSeg + i] * x[i];
  }
}

// End of the column segment starting at c0: at most kMaxSeg wide, never crossing a scale block.
HWY_INLINE int64_t SegmentEnd(const WeightMatrix& w, int64_t c0) {
  int64_t c1 = std::min(w.cols, c0 + kMaxSeg);
  if (w.scale != nullptr) c1 = std::min(c1, (c0 / w.block_cols + 1) * w.block_cols);
  return c1;
}

HWY_INLINE float BlockScale(const WeightMatrix& w, int64_t r, int64_t c) {
  return w.scale == nullptr ? 1.0f : w.scale[(r / w.block_rows) * w.scale_cols + c / w.block_cols];
}

template <DType kType>
HWY_INLINE const void* RowPtr(const WeightMatrix& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * w.cols * static_cast<int64_t>(DTypeSize(kType));
}

template <DType kType>
void MatMulRowsT(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                 int64_t T, float* y, int64_t y_stride) {
  HWY_ALIGN float tile[kRowTile * kMaxSeg];
  for (int64_t t = 0; t < T; ++t) std::fill(y + t * y_stride, y + t * y_stride + (r1 - r0), 0.0f);
  for (int64_t t0 = 0; t0 < T; t0 += kTokenTile) {
    const int64_t t1 = std::min(T, t0 + kTokenTile);
    for (int64_t rb = r0; rb < r1; rb += kRowTile) {
      const int64_t nr = std::min(kRowTile, r1 - rb);
      for (int64_t c0 = 0; c0 < w.cols;) {
        const int64_t c1 = SegmentEnd(w, c0), len = c1 - c0;
        float scale[kRowTile];
        for (int64_t i = 0; i < kRowTile; ++i) {
          const int64_t r = rb + std::min(i, nr - 1);  // short tiles repeat their last row
          ToF32<kType>(RowPtr<kType>(w, r), c0, len, tile + i * kMaxSeg);
          scale[i] = BlockScale(w, r, c0);
        }
        for (int64_t t = t0; t < t1; ++t) {
          float dot[kRowTile];
          Dot4(tile, x + t * x_stride + c0, len, dot);
          float* yt = y + t * y_stride + (rb - r0);
          for (int64_t i = 0; i < nr; ++i) yt[i] += scale[i] * dot[i];
        }
        c0 = c1;
      }
    }
  }
}

void MatMulRowsImpl(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                    int64_t T, float* y, int64_t y_stride) {
  switch (w.dtype) {
    case DType::kF32:
      return MatMulRowsT<DType::kF32>(w, r0, r1, x, x_stride, T, y, y_stride);
    case DType::kBF16:
      return MatMulRowsT<DType::kBF16>(w, r0, r1, x, x_stride, T, y, y_stride);
    case DType::kF16:
      return MatMulRowsT<DType::kF16>(w, r0, r1, x, x_stride, T, y, y_stride);
    case DType::kF8E4M3:
      return MatMulRowsT<DType::kF8E4M3>(w, r0, r1, x, x_stride, T, y, y_stride);
    default:
      HWY_ABORT("MatMul: unsupported weight dtype %s", DTypeName(w.dtype));
  }
}

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

void ConvertRowImpl(const WeightMatrix& w, int64_t r, float a, float* y, bool accumulate) {
  switch (w.dtype) {
    case DType::kF32:
      return ConvertRowT<DType::kF32>(w, r, a, y, accumulate);
    case DType::kBF16:
      return ConvertRowT<DType::kBF16>(w, r, a, y, accumulate);
    case DType::kF16:
      return ConvertRowT<DType::kF16>(w, r, a, y, accumulate);
    case DType::kF8E4M3:
      return ConvertRowT<DType::kF8E4M3>(w, r, a, y, accumulate);
    default:
      HWY_ABORT("ConvertRow: unsupported weight dtype %s", DTypeName(w.dtype));
  }
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv3::kernels {

HWY_EXPORT(MatMulRowsImpl);
HWY_EXPORT(ConvertRowImpl);
HWY_EXPORT(TargetNameImpl);

uint64_t WeightMatrix::bytes() const {
  uint64_t n = static_cast<uint64_t>(rows * cols) * DTypeSize(dtype);
  if (scale != nullptr)
    n += static_cast<uint64_t>((rows + block_rows - 1) / block_rows) * scale_cols * 4;
  return n;
}

void MatMulRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                int64_t T, float* y, int64_t y_stride) {
  HWY_DYNAMIC_DISPATCH(MatMulRowsImpl)(w, r0, r1, x, x_stride, T, y, y_stride);
}

void MatMul(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
            int64_t y_stride) {
  ParallelFor(w.rows, /*grain=*/4, [&](int64_t r0, int64_t r1, int) {
    HWY_DYNAMIC_DISPATCH(MatMulRowsImpl)(w, r0, r1, x, x_stride, T, y + r0, y_stride);
  });
}

void MatVecTransposedRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, float* y) {
  for (int64_t r = r0; r < r1; ++r) HWY_DYNAMIC_DISPATCH(ConvertRowImpl)(w, r, x[r - r0], y, true);
}

void DequantRow(const WeightMatrix& w, int64_t r, float* out) {
  HWY_DYNAMIC_DISPATCH(ConvertRowImpl)(w, r, 1.0f, out, false);
}

const char* DispatchedTargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

}  // namespace dsv3::kernels
#endif  // HWY_ONCE
