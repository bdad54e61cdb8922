// FP8 / BF16 training products and their quantizers (see quant_gemm.h), compiled once per SIMD
// target.
//
// Bf16Gemm works on output tiles of up to 96 rows x one panel of kNR columns (kNV = 2 vectors).
// The thread that takes a tile packs its panel of B once into k-major pairs bp [ceil(K/2)][kNR]:
// lane j of pair row p holds B[n0 + j][2p] (low 16 bits) and B[n0 + j][2p + 1] (high), the layout
// of vdpbf16ps. That micro-kernel broadcasts one 32-bit pair of A per row and multiplies it with
// the panel vectors, 8 rows x 2 vectors of accumulators and no horizontal sums; one instruction
// adds a_k b_k + a_{k+1} b_{k+1} per lane. The FMA micro-kernel instead widens the panel once into
// float32 rows bpf [2 ceil(K/2)][kNR] and the micro-tile's rows of A into af, then broadcasts one
// float per row and k: kMRFma rows x 2 vectors, one FMA each per k. The 128-blocks of k are the
// outer loop of a tile, so the block's slice of the panel stays in L1 while every micro-tile
// passes over it; each block sum is multiplied by sa(m) sb(n) (with scales) and added into the
// tile's float32 sums held in memory. The operations applied to one output element depend only on
// its row of A, its row of B and K, never on the tile or thread it falls in.
//
// Quantizers: q = E4M3(x / scale) is rounded in float32 arithmetic: for |y| >= 2^-6 the mantissa
// is rounded to 3 bits on the bit pattern (add 0x7FFFF plus the kept lowest bit, clear 20 bits:
// ties to even, carries into the exponent), then clamped at 448; below 2^-6 the E4M3 grid is the
// multiples of 2^-9, which adding and subtracting 2^14 (whose float32 ulp is 2^-9) rounds to, ties
// to even. The result has at most 4 significant bits, so its top 16 bits are its BF16 bits.
// Transposed outputs go through a 128 x 64 tile on the stack. Partial vectors are computed in
// zero-padded buffers so every element takes the same vector path.

#include "kernels/quant_gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/aligned.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif

// Declarations shared by every target's copy of this file (it is included once per target).
#ifndef DSV3_KERNELS_QUANT_GEMM_SHARED_
#define DSV3_KERNELS_QUANT_GEMM_SHARED_
namespace dsv3::kernels::quant_detail {

struct GemmArgs {
  int64_t M, N, K;
  const uint16_t* a;  // [M, K] (lda)
  int64_t lda;
  const float* sa;  // [M, K/128] (sa_stride) or null
  int64_t sa_stride;
  const uint16_t* b;  // [N, K] (ldb)
  int64_t ldb;
  const float* sb;  // [N, K/128] (sb_stride) or null
  int64_t sb_stride;
  float beta;
  float* c;  // [M, N] (ldc)
  int64_t ldc;
  bool scaled;   // sa or sb given: 128-blocks, each rescaled
  bool dot;      // vdpbf16ps allowed (AVX3 target only)
  bool c_trans;  // element (m, n) goes to c[n * ldc + m] (the operands were swapped)
};

struct QuantArgs {
  const float* x;  // [rows, cols] (ldx)
  int64_t rows, cols, ldx;
  bool pow2;
  uint16_t* q;  // see the public functions
  int64_t ldq;
  uint16_t* qt;  // QuantizeE4M3Blocks only; may be null
  int64_t ldqt;
  float* scales;
};

// Scale of a tile whose largest magnitude is amax: amax / 448, or the least power of two >= that;
// 1 when it is zero (a zero tile, or amax / 448 underflows).
inline float TileScale(float amax, bool pow2) {
  const float s = amax / kE4M3Max;
  if (!(s > 0.0f)) return 1.0f;
  if (!pow2) return s;
  int e;
  const float f = std::frexp(s, &e);  // s = f 2^e, f in [0.5, 1)
  return std::ldexp(1.0f, f == 0.5f ? e - 1 : e);
}

// The panels' pair layout (p[0] in the low half of a 32-bit lane) assumes little-endian memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pairs of BF16 in 32-bit lanes");
inline uint32_t LoadPair(const uint16_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t Align64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

constexpr int64_t kChunkCols = 64;    // columns per transposed tile
constexpr int64_t kMaxTileRows = 96;  // GEMM output tile height (a multiple of every kMR)

}  // namespace dsv3::kernels::quant_detail
#endif  // DSV3_KERNELS_QUANT_GEMM_SHARED_

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/quant_gemm.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/cache_control.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dsv3::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using quant_detail::CeilDiv;
using quant_detail::GemmArgs;
using quant_detail::kChunkCols;
using quant_detail::LoadPair;
using quant_detail::QuantArgs;
using quant_detail::TileScale;

using DF = hn::ScalableTag<float>;
using DU = hn::RebindToUnsigned<DF>;
using DU16 = hn::Rebind<uint16_t, DF>;
using V = hn::Vec<DF>;
using VU = hn::Vec<DU>;
constexpr int64_t kL = static_cast<int64_t>(hn::MaxLanes(DF()));

// Register blocking of the GEMM micro-kernel: kMR rows of A x kNV vectors of B columns, one
// accumulator each. With vdpbf16ps (AVX-512: 32 registers) 8 x 2: 16 accumulators, the two panel
// vectors and a broadcast pair. The FMA path broadcasts float32 A values: 12 x 2 on AVX-512, 6 x 2
// (12 accumulators) on the 16-register targets, 4 x 2 on the scalar ones.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr int kMRFma = 12;
#elif HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
constexpr int kMRFma = 4;
#else
constexpr int kMRFma = 6;
#endif
constexpr int kMRDot = 8;
constexpr int kNV = 2;
constexpr int64_t kNR = kNV * kL;  // panel width (columns)

// vdpbf16ps: AVX-512 targets, when the CPU has AVX512_BF16 (GemmArgs::dot).
#undef DSV3_QUANT_GEMM_DOT  // this file is compiled once per target
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
#define DSV3_QUANT_GEMM_DOT 1
#else
#define DSV3_QUANT_GEMM_DOT 0
#endif
HWY_INLINE bool UseDot(const GemmArgs& g) { return DSV3_QUANT_GEMM_DOT && g.dot; }

HWY_INLINE int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// v from n < kL (or more) floats at p; lanes past n are zero.
HWY_INLINE V LoadPart(DF df, const float* HWY_RESTRICT p, int64_t n) {
  if (n >= kL) return hn::LoadU(df, p);
  HWY_ALIGN float buf[kL] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
  return hn::Load(df, buf);
}

// Stores the low 16 bits of the first n (<= kL) lanes of bits.
HWY_INLINE void StoreCodes(VU bits, int64_t n, uint16_t* HWY_RESTRICT q) {
  const DU16 d16;
  const auto codes = hn::TruncateTo(d16, bits);
  if (n >= kL) {
    hn::StoreU(codes, d16, q);
    return;
  }
  HWY_ALIGN uint16_t buf[kL];
  hn::Store(codes, d16, buf);
  for (int64_t i = 0; i < n; ++i) q[i] = buf[i];
}

// ---- rounding --------------------------------------------------------------------------------

// BF16 bits of x (low 16 bits of each lane): round to nearest even; NaN -> quiet NaN.
HWY_INLINE VU Bf16Bits(V x) {
  const DU du;
  const VU bits = hn::BitCast(du, x);
  const VU lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
  const VU rounded = hn::ShiftRight<16>(hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFu), lsb)));
  const VU nan = hn::Or(hn::ShiftRight<16>(bits), hn::Set(du, 0x40u));
  return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(x)), nan, rounded);
}

// BF16 bits of E4M3(y) (low 16 bits of each lane): nearest, ties to even, saturating at 448.
HWY_INLINE VU E4M3Bits(V y) {
  const DF df;
  const DU du;
  const V ay = hn::Abs(y);
  const VU sign = hn::And(hn::BitCast(du, y), hn::Set(du, 0x80000000u));
  // |y| >= 2^-6: keep 3 mantissa bits, ties to even.
  VU bits = hn::BitCast(du, ay);
  const VU lsb = hn::And(hn::ShiftRight<20>(bits), hn::Set(du, 1u));
  bits = hn::And(hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFFu), lsb)), hn::Set(du, 0xFFF00000u));
  const V normal = hn::Min(hn::BitCast(df, bits), hn::Set(df, kE4M3Max));
  // |y| < 2^-6: multiples of 2^-9.
  const V magic = hn::Set(df, 16384.0f);
  const V subnormal = hn::Sub(hn::Add(ay, magic), magic);
  const V r = hn::IfThenElse(hn::Lt(ay, hn::Set(df, 0x1p-6f)), subnormal, normal);
  return hn::ShiftRight<16>(hn::Or(hn::BitCast(du, r), sign));
}

// Largest |x[i]| over n floats.
HWY_INLINE float AbsMax(const float* HWY_RESTRICT x, int64_t n) {
  const DF df;
  V m = hn::Zero(df);
  int64_t i = 0;
  for (; i + kL <= n; i += kL) m = hn::Max(m, hn::Abs(hn::LoadU(df, x + i)));
  float amax = hn::GetLane(hn::MaxOfLanes(df, m));
  for (; i < n; ++i) {
    const float v = std::fabs(x[i]);
    if (v > amax) amax = v;
  }
  return amax;
}

// q[i] = E4M3 bits of x[i] / scale for i < n.
HWY_INLINE void QuantSpan(const float* HWY_RESTRICT x, int64_t n, float scale,
                          uint16_t* HWY_RESTRICT q) {
  const DF df;
  const V s = hn::Set(df, scale);
  for (int64_t i = 0; i < n; i += kL) {
    const int64_t m = Min64(kL, n - i);
    StoreCodes(E4M3Bits(hn::Div(LoadPart(df, x + i, m), s)), m, q + i);
  }
}

HWY_INLINE void ZeroCodes(uint16_t* q, int64_t n) {
  for (int64_t i = 0; i < n; ++i) q[i] = 0;
}

// ---- BF16 conversion and quantizers ------------------------------------------------------------

// Rows [r0, r1) of ToBF16.
void ToBF16RowsImpl(const QuantArgs& g, int64_t r0, int64_t r1) {
  const DF df;
  const int64_t cols_pad = CeilDiv(g.cols, kQuantTile) * kQuantTile;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = g.x + r * g.ldx;
    uint16_t* q = g.q + r * g.ldq;
    for (int64_t c = 0; c < g.cols; c += kL) {
      const int64_t n = Min64(kL, g.cols - c);
      StoreCodes(Bf16Bits(LoadPart(df, x + c, n)), n, q + c);
    }
    ZeroCodes(q + g.cols, cols_pad - g.cols);
  }
}

// Rows [r0, r1) of QuantizeE4M3Tiles.
void QuantTilesRowsImpl(const QuantArgs& g, int64_t r0, int64_t r1) {
  const int64_t tiles = CeilDiv(g.cols, kQuantTile);
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = g.x + r * g.ldx;
    uint16_t* q = g.q + r * g.ldq;
    for (int64_t j = 0; j < tiles; ++j) {
      const int64_t c0 = j * kQuantTile, n = Min64(kQuantTile, g.cols - c0);
      const float s = TileScale(AbsMax(x + c0, n), g.pow2);
      g.scales[r * tiles + j] = s;
      QuantSpan(x + c0, n, s, q + c0);
    }
    ZeroCodes(q + g.cols, tiles * kQuantTile - g.cols);
  }
}

// Items [i0, i1) of the transposed outputs: item i is rows [128 (i / chunks), +128) x columns
// [64 (i % chunks), +64), chunks = ceil(cols / 64). kQuant: 128x1 E4M3 tiles, else BF16.
template <bool kQuant>
HWY_INLINE void TransposedItems(const QuantArgs& g, int64_t i0, int64_t i1) {
  const DF df;
  const int64_t chunks = CeilDiv(g.cols, kChunkCols), bands = CeilDiv(g.rows, kQuantTile);
  HWY_ALIGN uint16_t tile[kQuantTile][kChunkCols];  // [r - r0][c - c0]
  HWY_ALIGN float scale[kChunkCols];
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t band = item / chunks, r0 = band * kQuantTile, c0 = (item % chunks) * kChunkCols;
    const int64_t nr = Min64(kQuantTile, g.rows - r0), nc = Min64(kChunkCols, g.cols - c0);
    if constexpr (kQuant) {
      HWY_ALIGN float amax[kChunkCols];
      for (int64_t c = 0; c < kChunkCols; c += kL) {
        V m = hn::Zero(df);
        for (int64_t r = 0; r < nr; ++r) {
          m = hn::Max(m, hn::Abs(LoadPart(df, g.x + (r0 + r) * g.ldx + c0 + c, nc - c)));
        }
        hn::Store(m, df, amax + c);
      }
      for (int64_t c = 0; c < kChunkCols; ++c) {
        scale[c] = c < nc ? TileScale(amax[c], g.pow2) : 1.0f;
        if (c < nc) g.scales[(c0 + c) * bands + band] = scale[c];
      }
    }
    for (int64_t r = 0; r < nr; ++r) {
      const float* x = g.x + (r0 + r) * g.ldx + c0;
      for (int64_t c = 0; c < kChunkCols; c += kL) {
        const V v = LoadPart(df, x + c, nc - c);
        if constexpr (kQuant) {
          StoreCodes(E4M3Bits(hn::Div(v, hn::Load(df, scale + c))), kL, &tile[r][c]);
        } else {
          StoreCodes(Bf16Bits(v), kL, &tile[r][c]);
        }
      }
    }
    for (int64_t c = 0; c < nc; ++c) {
      uint16_t* q = g.q + (c0 + c) * g.ldq + r0;
      for (int64_t r = 0; r < nr; ++r) q[r] = tile[r][c];
      if (band == bands - 1) ZeroCodes(q + nr, kQuantTile - nr);
    }
  }
}

void ToBF16TransposedImpl(const QuantArgs& g, int64_t i0, int64_t i1) {
  TransposedItems<false>(g, i0, i1);
}
void QuantTilesTransposedImpl(const QuantArgs& g, int64_t i0, int64_t i1) {
  TransposedItems<true>(g, i0, i1);
}

// Blocks [i0, i1) of QuantizeE4M3Blocks, block i = (i / block_cols, i % block_cols).
void QuantBlocksImpl(const QuantArgs& g, int64_t i0, int64_t i1) {
  const DF df;
  const int64_t bcols = CeilDiv(g.cols, kQuantTile), bands = CeilDiv(g.rows, kQuantTile);
  const int64_t cols_pad = bcols * kQuantTile;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t br = item / bcols, bc = item % bcols;
    const int64_t r0 = br * kQuantTile, c0 = bc * kQuantTile;
    const int64_t nr = Min64(kQuantTile, g.rows - r0), nc = Min64(kQuantTile, g.cols - c0);
    V m = hn::Zero(df);
    for (int64_t r = 0; r < nr; ++r) {
      const float* x = g.x + (r0 + r) * g.ldx + c0;
      for (int64_t c = 0; c < nc; c += kL) m = hn::Max(m, hn::Abs(LoadPart(df, x + c, nc - c)));
    }
    const float s = TileScale(hn::GetLane(hn::MaxOfLanes(df, m)), g.pow2);
    g.scales[br * bcols + bc] = s;
    for (int64_t r = 0; r < nr; ++r) {
      uint16_t* q = g.q + (r0 + r) * g.ldq;
      QuantSpan(g.x + (r0 + r) * g.ldx + c0, nc, s, q + c0);
      if (bc == bcols - 1) ZeroCodes(q + g.cols, cols_pad - g.cols);
    }
    if (g.qt == nullptr) continue;
    for (int64_t c = 0; c < nc; ++c) {
      uint16_t* qt = g.qt + (c0 + c) * g.ldqt + r0;
      for (int64_t r = 0; r < nr; ++r) qt[r] = g.q[(r0 + r) * g.ldq + c0 + c];
      if (br == bands - 1) ZeroCodes(qt + nr, kQuantTile - nr);
    }
  }
}

// ---- GEMM ------------------------------------------------------------------------------------

// Per-thread scratch, 64-byte aligned pieces: pair panel bp [ceil(K/2)][kNR], float32 panel
// bpf [2 ceil(K/2)][kNR], panel scales sbp [K/128][kNR], the tile's float32 sums tot
// [kMaxTileRows][kNR], and the FMA path's float32 rows of A for one block, af [kMRFma][128].
struct Scratch {
  uint32_t* bp;
  float* bpf;
  float* sbp;
  float* tot;
  float* af;
};

HWY_INLINE void ScratchParts(int64_t K, int64_t* sizes) {
  using quant_detail::Align64;
  const int64_t pairs = CeilDiv(K, 2);
  sizes[0] = Align64(pairs * kNR * 4);
  sizes[1] = Align64(2 * pairs * kNR * 4);
  sizes[2] = Align64(CeilDiv(K, kQuantTile) * kNR * 4);
  sizes[3] = Align64(quant_detail::kMaxTileRows * kNR * 4);
  sizes[4] = Align64(kMRFma * kQuantTile * 4);
}

int64_t GemmScratchBytesImpl(int64_t K) {
  int64_t sizes[5];
  ScratchParts(K, sizes);
  return sizes[0] + sizes[1] + sizes[2] + sizes[3] + sizes[4];
}

HWY_INLINE Scratch CarveScratch(void* base, int64_t K) {
  int64_t sizes[5];
  ScratchParts(K, sizes);
  Scratch s;
  uint8_t* p = static_cast<uint8_t*>(base);
  s.bp = reinterpret_cast<uint32_t*>(p);
  s.bpf = reinterpret_cast<float*>(p += sizes[0]);
  s.sbp = reinterpret_cast<float*>(p += sizes[1]);
  s.tot = reinterpret_cast<float*>(p += sizes[2]);
  s.af = reinterpret_cast<float*>(p += sizes[3]);
  return s;
}

int64_t GemmPanelWidthImpl() { return kNR; }

// Packs columns [n0, n0 + ncols) of B (rows of b) into the panel; lanes past ncols are zero.
HWY_INLINE void PackPanel(const GemmArgs& g, int64_t n0, int64_t ncols, const Scratch& s) {
  const int64_t K = g.K, full = K / 2, pairs = CeilDiv(K, 2);
  const uint16_t* rows[kNR];
  for (int64_t j = 0; j < ncols; ++j) rows[j] = g.b + (n0 + j) * g.ldb;
  // 16 pairs (one cache line) of each row at a time: rows of B are often 4 KiB apart, and reading
  // all of them at one k would keep evicting each other from L1.
  constexpr int64_t kLine = 16;
  for (int64_t p0 = 0; p0 < full; p0 += kLine) {
    const int64_t np = Min64(kLine, full - p0);
    uint32_t* dst = s.bp + p0 * kNR;
    for (int64_t j = 0; j < ncols; ++j) {
      const uint16_t* row = rows[j] + 2 * p0;
      for (int64_t p = 0; p < np; ++p) dst[p * kNR + j] = LoadPair(row + 2 * p);
    }
    for (int64_t p = 0; p < np; ++p) {
      for (int64_t j = ncols; j < kNR; ++j) dst[p * kNR + j] = 0;
    }
  }
  if (K & 1) {  // the last pair holds one element
    uint32_t* dst = s.bp + full * kNR;
    for (int64_t j = 0; j < ncols; ++j) dst[j] = rows[j][K - 1];
    for (int64_t j = ncols; j < kNR; ++j) dst[j] = 0;
  }
  if (g.scaled) {
    for (int64_t kb = 0; kb < K / kQuantTile; ++kb) {
      float* dst = s.sbp + kb * kNR;
      for (int64_t j = 0; j < kNR; ++j) {
        dst[j] = j >= ncols ? 0.0f : g.sb ? g.sb[(n0 + j) * g.sb_stride + kb] : 1.0f;
      }
    }
  }
  if (UseDot(g)) return;
  const DF df;
  const DU du;
  const VU hi = hn::Set(du, 0xFFFF0000u);
  for (int64_t p = 0; p < pairs; ++p) {
    for (int64_t j = 0; j < kNR; j += kL) {
      const VU v = hn::Load(du, s.bp + p * kNR + j);
      hn::Store(hn::BitCast(df, hn::ShiftLeft<16>(v)), df, s.bpf + 2 * p * kNR + j);
      hn::Store(hn::BitCast(df, hn::And(v, hi)), df, s.bpf + (2 * p + 1) * kNR + j);
    }
  }
}

// One 128-block kb of k (k0 = 128 kb, k1 = min(K, k0 + 128)) for the kRows rows from m0 of A,
// whose sums start at tot row r0: tot += (scaled ? sa(m, kb) sb(n, kb) : 1) * block sum.
struct Block {
  int64_t kb, k0, k1;
};

template <int kRows>
HWY_INLINE void AddBlock(const GemmArgs& g, int64_t m0, int64_t r0, const Block& blk,
                         const Scratch& s, const V (&acc)[kRows][kNV]) {
  const DF df;
  HWY_UNROLL(12)
  for (int i = 0; i < kRows; ++i) {
    const V sa = hn::Set(df, g.sa != nullptr ? g.sa[(m0 + i) * g.sa_stride + blk.kb] : 1.0f);
    HWY_UNROLL(12)
    for (int j = 0; j < kNV; ++j) {
      float* t = s.tot + (r0 + i) * kNR + j * kL;
      if (g.scaled) {
        const V scale = hn::Mul(sa, hn::Load(df, s.sbp + blk.kb * kNR + j * kL));
        hn::Store(hn::MulAdd(acc[i][j], scale, hn::Load(df, t)), df, t);
      } else {
        hn::Store(hn::Add(hn::Load(df, t), acc[i][j]), df, t);
      }
    }
  }
}

// Rows of A are usually a page or more apart, out of the hardware prefetchers' reach: each block
// requests its row's next block (256 bytes) for the next pass over the tile.
HWY_INLINE void PrefetchNextBlock(const GemmArgs& g, const uint16_t* row_at_k0, const Block& blk) {
  if (blk.k1 >= g.K) return;
  for (int64_t k = 0; k < kQuantTile; k += 32) hwy::Prefetch(row_at_k0 + kQuantTile + k);
}

// Block sums with float32 FMAs: the block's part of the rows of A is widened to float32 (af),
// then each k broadcasts one value per row against the kNV panel vectors of row k of bpf, in
// ascending k.
template <int kRows>
HWY_INLINE void BlockFma(const GemmArgs& g, int64_t m0, int64_t r0, const Block& blk,
                         const Scratch& s) {
  const DF df;
  const hn::Rebind<hwy::bfloat16_t, DF> dbf;
  const int64_t n = blk.k1 - blk.k0;
  for (int i = 0; i < kRows; ++i) {
    const uint16_t* a = g.a + (m0 + i) * g.lda + blk.k0;
    float* af = s.af + i * kQuantTile;
    int64_t k = 0;
    for (; k + kL <= n; k += kL) {
      const auto* p = reinterpret_cast<const hwy::bfloat16_t*>(a + k);
      hn::Store(hn::PromoteTo(df, hn::LoadU(dbf, p)), df, af + k);
    }
    for (; k < n; ++k) af[k] = BF16ToF32(a[k]);
    PrefetchNextBlock(g, a, blk);
  }
  V acc[kRows][kNV];
  HWY_UNROLL(12)
  for (int i = 0; i < kRows; ++i) {
    HWY_UNROLL(2)
    for (int j = 0; j < kNV; ++j) acc[i][j] = hn::Zero(df);
  }
  const float* bpf = s.bpf + blk.k0 * kNR;
  for (int64_t k = 0; k < n; ++k) {
    V b[kNV];
    HWY_UNROLL(2)
    for (int j = 0; j < kNV; ++j) b[j] = hn::Load(df, bpf + k * kNR + j * kL);
    HWY_UNROLL(12)
    for (int i = 0; i < kRows; ++i) {
      const V av = hn::Set(df, s.af[i * kQuantTile + k]);
      HWY_UNROLL(2)
      for (int j = 0; j < kNV; ++j) acc[i][j] = hn::MulAdd(av, b[j], acc[i][j]);
    }
  }
  AddBlock<kRows>(g, m0, r0, blk, s, acc);
}

#if DSV3_QUANT_GEMM_DOT
// Block sums with vdpbf16ps on the pair panel. Runs only when the CPU has AVX512_BF16.
template <int kRows>
HWY_NOINLINE __attribute__((target(HWY_TARGET_STR ",avx512bf16"))) void BlockDot(
    const GemmArgs& g, int64_t m0, int64_t r0, const Block& blk, const Scratch& s) {
  static_assert(kL == 16, "one __m512 per vector");
  const uint16_t* a[kRows];
  HWY_UNROLL(8)
  for (int i = 0; i < kRows; ++i) {
    a[i] = g.a + (m0 + i) * g.lda;
    PrefetchNextBlock(g, a[i] + blk.k0, blk);
  }
  __m512 acc[kRows][kNV];
  HWY_UNROLL(8)
  for (int i = 0; i < kRows; ++i) {
    HWY_UNROLL(2)
    for (int j = 0; j < kNV; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  int64_t p = blk.k0 / 2;  // k0 is even
  for (; 2 * p + 2 <= blk.k1; ++p) {
    __m512i bv[kNV];
    HWY_UNROLL(2)
    for (int j = 0; j < kNV; ++j) bv[j] = _mm512_load_si512(s.bp + p * kNR + j * kL);
    HWY_UNROLL(8)
    for (int i = 0; i < kRows; ++i) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(LoadPair(a[i] + 2 * p)));
      HWY_UNROLL(2)
      for (int j = 0; j < kNV; ++j) {
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)av, (__m512bh)bv[j]);
      }
    }
  }
  if (2 * p < blk.k1) {  // odd K (no scales): the pair's high halves are zero in A and B
    HWY_UNROLL(8)
    for (int i = 0; i < kRows; ++i) {
      const __m512i av = _mm512_set1_epi32(a[i][2 * p]);
      HWY_UNROLL(2)
      for (int j = 0; j < kNV; ++j) {
        const __m512i bv = _mm512_load_si512(s.bp + p * kNR + j * kL);
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)av, (__m512bh)bv);
      }
    }
  }
  V sums[kRows][kNV];
  HWY_UNROLL(8)
  for (int i = 0; i < kRows; ++i) {
    HWY_UNROLL(2)
    for (int j = 0; j < kNV; ++j) sums[i][j] = V{acc[i][j]};
  }
  AddBlock<kRows>(g, m0, r0, blk, s, sums);
}
#endif

// The block for `rows` (1..kRows) rows.
template <int kRows, bool kDot>
HWY_INLINE void BlockRows(int64_t rows, const GemmArgs& g, int64_t m0, int64_t r0, const Block& blk,
                          const Scratch& s) {
  if constexpr (kRows > 1) {
    if (rows < kRows) return BlockRows<kRows - 1, kDot>(rows, g, m0, r0, blk, s);
  }
#if DSV3_QUANT_GEMM_DOT
  if constexpr (kDot) {
    BlockDot<kRows>(g, m0, r0, blk, s);
    return;
  }
#endif
  BlockFma<kRows>(g, m0, r0, blk, s);
}

// Every block of k for rows [m_begin, m_end) (at most kMaxTileRows), in micro-tiles of kMR rows.
template <int kMR, bool kDot>
HWY_INLINE void TileBlocks(const GemmArgs& g, int64_t m_begin, int64_t m_end, const Scratch& s) {
  for (int64_t k0 = 0, kb = 0; k0 < g.K; k0 += kQuantTile, ++kb) {
    const Block blk{kb, k0, Min64(g.K, k0 + kQuantTile)};
    for (int64_t m = m_begin; m < m_end; m += kMR) {
      BlockRows<kMR, kDot>(Min64(kMR, m_end - m), g, m, m - m_begin, blk, s);
    }
  }
}

// C rows [m_begin, m_end), columns [n0, n0 + ncols) = beta C + tot (C transposed with c_trans).
// Elements that are not a whole vector of one row of C go through a buffer with the same
// operations.
HWY_INLINE void StoreTile(const GemmArgs& g, int64_t m_begin, int64_t m_end, int64_t n0,
                          int64_t ncols, const Scratch& s) {
  const DF df;
  const V beta = hn::Set(df, g.beta);
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* tot = s.tot + (m - m_begin) * kNR;
    for (int64_t j = 0; j < ncols; j += kL) {
      V t = hn::Load(df, tot + j);
      const int64_t n = Min64(kL, ncols - j);
      if (n == kL && !g.c_trans) {
        float* c = g.c + m * g.ldc + n0 + j;
        if (g.beta != 0.0f) t = hn::MulAdd(beta, hn::LoadU(df, c), t);
        hn::StoreU(t, df, c);
        continue;
      }
      // Lane x is c[m][n0 + j + x], or c[n0 + j + x][m] transposed.
      float* c = g.c_trans ? g.c + (n0 + j) * g.ldc + m : g.c + m * g.ldc + n0 + j;
      const int64_t step = g.c_trans ? g.ldc : 1;
      HWY_ALIGN float buf[kL] = {};
      if (g.beta != 0.0f) {
        for (int64_t x = 0; x < n; ++x) buf[x] = c[x * step];
        t = hn::MulAdd(beta, hn::Load(df, buf), t);
      }
      hn::Store(t, df, buf);
      for (int64_t x = 0; x < n; ++x) c[x * step] = buf[x];
    }
  }
}

// Tiles [t0, t1): tile t is panel t / m_tiles (columns [kNR p, kNR p + kNR)) and rows
// [mc (t % m_tiles), + mc), m_tiles = ceil(M / mc), mc <= kMaxTileRows. Blocks of k are the outer
// loop of a tile, so that the block's slice of the panel (16 KiB float32 on AVX-512) stays in L1
// while every micro-tile of the tile passes over it. scratch: GemmScratchBytesImpl(K) bytes.
void GemmTilesImpl(const GemmArgs& g, int64_t mc, int64_t t0, int64_t t1, void* scratch) {
  const DF df;
  const Scratch s = CarveScratch(scratch, g.K);
  const int64_t m_tiles = CeilDiv(g.M, mc);
  int64_t packed = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t panel = t / m_tiles, n0 = panel * kNR, ncols = Min64(kNR, g.N - n0);
    if (panel != packed) {
      PackPanel(g, n0, ncols, s);
      packed = panel;
    }
    const int64_t m_begin = (t % m_tiles) * mc, m_end = Min64(g.M, m_begin + mc);
    for (int64_t i = 0; i < (m_end - m_begin) * kNR; i += kL) {
      hn::Store(hn::Zero(df), df, s.tot + i);
    }
    if (UseDot(g)) {
      TileBlocks<kMRDot, true>(g, m_begin, m_end, s);
    } else {
      TileBlocks<kMRFma, false>(g, m_begin, m_end, s);
    }
    StoreTile(g, m_begin, m_end, n0, ncols, s);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv3::kernels {

HWY_EXPORT(ToBF16RowsImpl);
HWY_EXPORT(ToBF16TransposedImpl);
HWY_EXPORT(QuantTilesRowsImpl);
HWY_EXPORT(QuantTilesTransposedImpl);
HWY_EXPORT(QuantBlocksImpl);
HWY_EXPORT(GemmScratchBytesImpl);
HWY_EXPORT(GemmPanelWidthImpl);
HWY_EXPORT(GemmTilesImpl);

namespace {
using quant_detail::CeilDiv;
using quant_detail::GemmArgs;
using quant_detail::QuantArgs;

bool CpuHasAvx512Bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(b & (1u << 16)) || a < 1) return false;  // AVX512F; leaf 7 has subleaf 1
  __get_cpuid_count(7, 1, &a, &b, &c, &d);
  return (a & (1u << 5)) != 0;  // AVX512_BF16
#else
  return false;
#endif
}

std::atomic<bool> g_bf16_dot_off{false};

// Per-thread GEMM scratch, grown as needed and kept.
void* ThreadScratch(int64_t bytes) {
  thread_local AlignedArray<uint8_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < bytes) buffer.Resize(bytes, false);
  return buffer.data();
}

// Items of the transposed outputs: 128-row bands x 64-column chunks.
int64_t TransposedItems(int64_t rows, int64_t cols) {
  return CeilDiv(rows, kQuantTile) * CeilDiv(cols, quant_detail::kChunkCols);
}
}  // namespace

bool Bf16DotEnabled() {
  static const bool supported = CpuHasAvx512Bf16();
  return supported && !g_bf16_dot_off.load(std::memory_order_relaxed);
}

void SetBf16DotEnabled(bool enabled) { g_bf16_dot_off.store(!enabled); }

void Bf16Gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const float* sa,
              int64_t sa_stride, const uint16_t* b, int64_t ldb, const float* sb, int64_t sb_stride,
              float beta, float* c, int64_t ldc) {
  const bool scaled = sa != nullptr || sb != nullptr;
  if (scaled && K % kQuantTile != 0) {
    Fail("Bf16Gemm: K = {} must be a multiple of {} with block scales", K, kQuantTile);
  }
  if (M <= 0 || N <= 0) return;
  // Each thread packs the panels of B it multiplies (N x K in all), so with fewer rows in A the
  // operands trade places: C^T = B A^T, written transposed. Every product, sum and scale product
  // is commutative in IEEE arithmetic, so the results are the same bits either way.
  const int64_t k = std::max<int64_t>(K, 0);
  const bool dot = Bf16DotEnabled();
  const GemmArgs g = M < N ? GemmArgs{N,  M,         k,    b, ldb, sb,     sb_stride, a,   lda,
                                      sa, sa_stride, beta, c, ldc, scaled, dot,       true}
                           : GemmArgs{M,  N,         k,    a, lda, sa,     sa_stride, b,    ldb,
                                      sb, sb_stride, beta, c, ldc, scaled, dot,       false};
  const int64_t nr = HWY_DYNAMIC_DISPATCH(GemmPanelWidthImpl)();
  const int64_t bytes = HWY_DYNAMIC_DISPATCH(GemmScratchBytesImpl)(g.K);
  // Row tiles of 96, smaller (multiples of 24, which every micro-kernel height divides) when there
  // are too few panels to give every thread two tiles. The split never changes results.
  const int64_t panels = CeilDiv(g.N, nr);
  const int64_t want_row_tiles = CeilDiv(2 * NumThreads(), panels);
  const int64_t mc = std::clamp<int64_t>(CeilDiv(CeilDiv(g.M, want_row_tiles), 24) * 24, 24,
                                         quant_detail::kMaxTileRows);
  ParallelFor(panels * CeilDiv(g.M, mc), 1, [&](int64_t t0, int64_t t1, int) {
    HWY_DYNAMIC_DISPATCH(GemmTilesImpl)(g, mc, t0, t1, ThreadScratch(bytes));
  });
}

void ToBF16(const float* x, int64_t rows, int64_t cols, int64_t ldx, uint16_t* q, int64_t ldq) {
  if (rows <= 0 || cols <= 0) return;
  const QuantArgs g{x, rows, cols, ldx, false, q, ldq, nullptr, 0, nullptr};
  ParallelFor(rows, 8, [&](int64_t r0, int64_t r1, int) {
    HWY_DYNAMIC_DISPATCH(ToBF16RowsImpl)(g, r0, r1);
  });
}

void ToBF16Transposed(const float* x, int64_t rows, int64_t cols, int64_t ldx, uint16_t* q,
                      int64_t ldq) {
  if (rows <= 0 || cols <= 0) return;
  const QuantArgs g{x, rows, cols, ldx, false, q, ldq, nullptr, 0, nullptr};
  ParallelFor(TransposedItems(rows, cols), 1, [&](int64_t i0, int64_t i1, int) {
    HWY_DYNAMIC_DISPATCH(ToBF16TransposedImpl)(g, i0, i1);
  });
}

void QuantizeE4M3Tiles(const float* x, int64_t rows, int64_t cols, int64_t ldx, bool pow2,
                       uint16_t* q, int64_t ldq, float* scales) {
  if (rows <= 0 || cols <= 0) return;
  const QuantArgs g{x, rows, cols, ldx, pow2, q, ldq, nullptr, 0, scales};
  ParallelFor(rows, 8, [&](int64_t r0, int64_t r1, int) {
    HWY_DYNAMIC_DISPATCH(QuantTilesRowsImpl)(g, r0, r1);
  });
}

void QuantizeE4M3TilesTransposed(const float* x, int64_t rows, int64_t cols, int64_t ldx, bool pow2,
                                 uint16_t* q, int64_t ldq, float* scales) {
  if (rows <= 0 || cols <= 0) return;
  const QuantArgs g{x, rows, cols, ldx, pow2, q, ldq, nullptr, 0, scales};
  ParallelFor(TransposedItems(rows, cols), 1, [&](int64_t i0, int64_t i1, int) {
    HWY_DYNAMIC_DISPATCH(QuantTilesTransposedImpl)(g, i0, i1);
  });
}

void QuantizeE4M3Blocks(const float* x, int64_t rows, int64_t cols, int64_t ldx, bool pow2,
                        uint16_t* q, int64_t ldq, uint16_t* qt, int64_t ldqt, float* scales) {
  if (rows <= 0 || cols <= 0) return;
  const QuantArgs g{x, rows, cols, ldx, pow2, q, ldq, qt, ldqt, scales};
  const int64_t blocks = CeilDiv(rows, kQuantTile) * CeilDiv(cols, kQuantTile);
  ParallelFor(blocks, 1, [&](int64_t i0, int64_t i1, int) {
    HWY_DYNAMIC_DISPATCH(QuantBlocksImpl)(g, i0, i1);
  });
}

}  // namespace dsv3::kernels
#endif  // HWY_ONCE
