// Float32 GEMM of the trainer (see gemm.h), one copy per SIMD target, in the layout of Goto's
// algorithm:
//
//   for each column block jc of N (kNC wide)
//     for each block pc of the reduction (kKC deep)
//       pack op(B)[pc.., jc..] into panels of kNR columns       Bp [nc/kNR][kc][kNR]  (L2)
//       for each block ic of M (kMC tall)
//         pack op(A)[ic.., pc..] into panels of kMR rows        Ap [mc/kMR][kc][kMR]  (L2)
//         for each panel ir of Ap                                            (one in L1)
//           for each panel jr of Bp:  C[ic + ir.., jc + jr..] (+)= Ap[ir] Bp[jr]  (micro-kernel)
//
// The micro-kernel holds a kMR x kNR tile of C in registers (kMR rows of kNV vectors): per k it
// loads kNV vectors of Bp, broadcasts kMR scalars of Ap and issues kMR * kNV FMAs. Tiles at the
// bottom and right edges of C run variants with fewer rows or vectors (no work on padding rows).
// Packing puts both operands in the order the micro-kernel reads them whatever their
// transposition, so one micro-kernel serves all four products; transposed operands go through 4x4
// register transposes, and every source row is read front to back with prefetching.
//
// Numbers: each element of C sums its products in ascending k, in float32 fused multiply-adds
// (plain multiply-add on targets without FMA), one partial sum per block of kKC products, and adds
// the partial sums to C in block order (the first one overwrites C when beta == 0). kKC is the same
// constant on every target and nothing else (tiles, thread count, where the threads split) changes
// that sequence, so a result does not depend on the thread count, and the FMA targets (AVX2, AVX3)
// agree bit for bit.
//
// Threads split the rows (or the columns, when that balances better) into contiguous ranges of
// whole tiles; each packs its own panels into thread-local scratch that grows once (at most
// kKC x (kNC + kMC) floats, 608 KiB).

#include "kernels/gemm.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "core/aligned.h"
#include "core/parallel.h"

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/gemm.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/cache_control.h"
// clang-format on

namespace dsv3::kernels {
// Per-thread packing scratch of at least `floats` floats, 64-byte aligned (defined once below).
float* GemmScratch(int64_t floats);
}  // namespace dsv3::kernels

HWY_BEFORE_NAMESPACE();
namespace dsv3::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

// ---- blocking ---------------------------------------------------------------------------------

// Register tile: kMR rows x kNV vectors. AVX-512 has 32 vector registers: 12 x 2 takes 24
// accumulators, 2 for B and 1-2 for broadcasts; the other targets have 16: 6 x 2 takes 12.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr int64_t kMR = 12;
constexpr int64_t kNV = 2;
#elif HWY_TARGET == HWY_SCALAR
constexpr int64_t kMR = 4;
constexpr int64_t kNV = 4;
#else
constexpr int64_t kMR = 6;
constexpr int64_t kNV = 2;
#endif
constexpr int64_t kL = static_cast<int64_t>(hn::MaxLanes(DF()));
constexpr int64_t kNR = kNV * kL;  // columns of the register tile
// Reduction block: the same on every target (it fixes the summation order, see above). One Ap
// panel (kMR x kKC, at most 12 KiB) stays in L1 while the micro-kernel passes over Bp.
constexpr int64_t kKC = 256;
// Columns per Bp block: kKC x kNC floats = 512 KiB, which stays in a 1 MiB L2 while every row
// tile of the thread passes over it.
constexpr int64_t kNC = 512 / kNR * kNR;
// Rows of A packed at a time: each row of a transposed A is then read in runs of 96 floats (whole
// cache lines) rather than kMR. 96 x kKC floats = 96 KiB, beside Bp in L2.
constexpr int64_t kMC = 96 / kMR * kMR;
// Below this many multiply-adds one thread does the whole product (the pool's start-up costs more).
constexpr int64_t kMinParallelMacs = int64_t{1} << 18;

// ---- packing ----------------------------------------------------------------------------------

#if HWY_TARGET != HWY_SCALAR
// o[i * dst_stride + j] = s[j * src_stride + i] for i, j < 4: four rows of four loaded, transposed
// by interleaving, stored as four columns.
HWY_INLINE void Transpose4x4(const float* HWY_RESTRICT s, int64_t src_stride, float* HWY_RESTRICT o,
                             int64_t dst_stride) {
  const hn::FixedTag<float, 4> d4;
  const auto r0 = hn::LoadU(d4, s);                                      // a0 a1 a2 a3
  const auto r1 = hn::LoadU(d4, s + src_stride);                         // b0 b1 b2 b3
  const auto r2 = hn::LoadU(d4, s + 2 * src_stride);                     // c0 c1 c2 c3
  const auto r3 = hn::LoadU(d4, s + 3 * src_stride);                     // d0 d1 d2 d3
  const auto t0 = hn::InterleaveLower(d4, r0, r1);                       // a0 b0 a1 b1
  const auto t1 = hn::InterleaveLower(d4, r2, r3);                       // c0 d0 c1 d1
  const auto t2 = hn::InterleaveUpper(d4, r0, r1);                       // a2 b2 a3 b3
  const auto t3 = hn::InterleaveUpper(d4, r2, r3);                       // c2 d2 c3 d3
  hn::StoreU(hn::ConcatLowerLower(d4, t1, t0), d4, o);                   // a0 b0 c0 d0
  hn::StoreU(hn::ConcatUpperUpper(d4, t1, t0), d4, o + dst_stride);      // a1 b1 c1 d1
  hn::StoreU(hn::ConcatLowerLower(d4, t3, t2), d4, o + 2 * dst_stride);  // a2 b2 c2 d2
  hn::StoreU(hn::ConcatUpperUpper(d4, t3, t2), d4, o + 3 * dst_stride);  // a3 b3 c3 d3
}
#endif

// dst[k * dst_stride + r] = src[r * src_stride + k] for r < rows, k < cols: a transposed copy.
// The source is read in chunks of one cache line (16 floats) of every row, the chunk after next
// prefetched, so that all rows' misses overlap; whole 4 x 4 blocks go through registers, the
// edges are copied one by one.
HWY_INLINE void CopyTransposed(const float* HWY_RESTRICT src, int64_t src_stride, int64_t rows,
                               int64_t cols, float* HWY_RESTRICT dst, int64_t dst_stride) {
  constexpr int64_t kChunk = 16;
  for (int64_t k0 = 0; k0 < cols; k0 += kChunk) {
    const int64_t k1 = std::min(cols, k0 + kChunk);
    if (k0 + 2 * kChunk < cols) {
      for (int64_t r = 0; r < rows; ++r) hwy::Prefetch(src + r * src_stride + k0 + 2 * kChunk);
    }
    int64_t r = 0;
#if HWY_TARGET != HWY_SCALAR
    for (; r + 4 <= rows; r += 4) {
      const float* s = src + r * src_stride;
      int64_t k = k0;
      for (; k + 4 <= k1; k += 4)
        Transpose4x4(s + k, src_stride, dst + k * dst_stride + r, dst_stride);
      for (; k < k1; ++k) {
        for (int64_t i = 0; i < 4; ++i) dst[k * dst_stride + r + i] = s[i * src_stride + k];
      }
    }
#endif
    for (; r < rows; ++r) {
      for (int64_t k = k0; k < k1; ++k) dst[k * dst_stride + r] = src[r * src_stride + k];
    }
  }
}

// Panels of `width` columns from rows of contiguous floats, zero past column n:
//   dst[p * kc * width + k * width + j] = src[k * src_stride + p * width + j]
// Each row of the source is read once, front to back, whatever the panel width: a row strided
// by a power of two is not visited once per panel (which would need its cache lines to stay in L2
// from one panel to the next).
HWY_INLINE void PackRows(const float* HWY_RESTRICT src, int64_t src_stride, int64_t kc, int64_t n,
                         int64_t width, float* HWY_RESTRICT dst) {
  const DF df;
  const int64_t full = n / width, rest = n % width, panel = kc * width;
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = src + k * src_stride;
    float* d = dst + k * width;
    if (k + 4 < kc) {  // the row after next but one: its run of n floats, line by line
      for (int64_t j = 0; j < n; j += 16) hwy::Prefetch(s + 4 * src_stride + j);
    }
    for (int64_t p = 0; p < full; ++p, s += width, d += panel) {
      int64_t j = 0;
      if (width % kL == 0) {  // panels of B: aligned whole vectors
        for (; j < width; j += kL) hn::Store(hn::LoadU(df, s + j), df, d + j);
      }
#if HWY_TARGET != HWY_SCALAR
      const hn::FixedTag<float, 4> d4;
      for (; j + 4 <= width; j += 4) hn::StoreU(hn::LoadU(d4, s + j), d4, d + j);
#endif
      for (; j < width; ++j) d[j] = s[j];
    }
    if (rest > 0) {
      for (int64_t j = 0; j < rest; ++j) d[j] = s[j];
      for (int64_t j = rest; j < width; ++j) d[j] = 0.0f;
    }
  }
}

// Panels of `width` columns, column j of panel p from row p * width + j of the source (rows of kc
// contiguous floats), zero past row n:
//   dst[p * kc * width + k * width + j] = src[(p * width + j) * src_stride + k]
HWY_INLINE void PackColumns(const float* HWY_RESTRICT src, int64_t src_stride, int64_t kc,
                            int64_t n, int64_t width, float* HWY_RESTRICT dst) {
  for (int64_t j0 = 0; j0 < n; j0 += width) {
    const int64_t w = std::min(width, n - j0);
    float* panel = dst + (j0 / width) * kc * width;
    CopyTransposed(src + j0 * src_stride, src_stride, w, kc, panel, width);
    if (w < width) {
      for (int64_t k = 0; k < kc; ++k)
        std::fill(panel + k * width + w, panel + (k + 1) * width, 0.0f);
    }
  }
}

// Ap [ceil(mc / kMR)][kc][kMR]: Ap[p][k][r] = op(A)(ic + p * kMR + r, pc + k), zero past M.
HWY_INLINE void PackA(Trans ta, const float* HWY_RESTRICT a, int64_t lda, int64_t ic, int64_t mc,
                      int64_t pc, int64_t kc, float* HWY_RESTRICT ap) {
  if (ta == Trans::kT) {  // op(A)(m, k) = a[k][m]
    PackRows(a + pc * lda + ic, lda, kc, mc, kMR, ap);
  } else {  // a[m][k]
    PackColumns(a + ic * lda + pc, lda, kc, mc, kMR, ap);
  }
}

// Bp [ceil(nc / kNR)][kc][kNR]: Bp[p][k][j] = op(B)(pc + k, jc + p * kNR + j), zero past N.
HWY_INLINE void PackB(Trans tb, const float* HWY_RESTRICT b, int64_t ldb, int64_t pc, int64_t kc,
                      int64_t jc, int64_t nc, float* HWY_RESTRICT bp) {
  if (tb == Trans::kN) {  // op(B)(k, n) = b[k][n]
    PackRows(b + pc * ldb + jc, ldb, kc, nc, kNR, bp);
  } else {  // b[n][k]
    PackColumns(b + jc * ldb + pc, ldb, kc, nc, kNR, bp);
  }
}

// ---- micro-kernel -----------------------------------------------------------------------------

// C[kRows, nr] = (overwrite ? 0 : C) + sum_k Ap[k][r] Bp[k][j] over one panel of each, for the
// top-left kRows x nr of the register tile (kRows <= kMR, nr <= kVecs * kL; the panels keep their
// full widths kMR and kNR); C has row stride ldc. The tiles at the bottom and right edges of C use
// fewer rows and vectors; each element is computed the same way in every variant.
template <int64_t kRows, int64_t kVecs>
HWY_NOINLINE void MicroKernel(int64_t kc, const float* HWY_RESTRICT ap,
                              const float* HWY_RESTRICT bp, float* HWY_RESTRICT c, int64_t ldc,
                              int64_t nr, bool overwrite) {
  using V = hn::Vec<DF>;
  const DF df;
  // C is read (or written) at the end, after thousands of FMAs: fetch its lines now.
  for (int64_t r = 0; r < kRows; ++r) {
    hwy::Prefetch(c + r * ldc);
    hwy::Prefetch(c + r * ldc + nr - 1);
  }
  // The loops over rows and vectors are unrolled completely, so that acc lives in registers.
  V acc[kRows][kVecs];
  HWY_UNROLL(12)
  for (int64_t r = 0; r < kRows; ++r) {
    HWY_UNROLL(4)
    for (int64_t v = 0; v < kVecs; ++v) acc[r][v] = hn::Zero(df);
  }
  for (int64_t k = 0; k < kc; ++k) {
    V bv[kVecs];
    HWY_UNROLL(4)
    for (int64_t v = 0; v < kVecs; ++v) bv[v] = hn::Load(df, bp + v * kL);
    HWY_UNROLL(12)
    for (int64_t r = 0; r < kRows; ++r) {
      const V av = hn::Set(df, ap[r]);
      HWY_UNROLL(4)
      for (int64_t v = 0; v < kVecs; ++v) acc[r][v] = hn::MulAdd(av, bv[v], acc[r][v]);
    }
    ap += kMR;
    bp += kNR;
  }
  if (nr == kVecs * kL) {
    HWY_UNROLL(12)
    for (int64_t r = 0; r < kRows; ++r) {
      float* cr = c + r * ldc;
      HWY_UNROLL(4)
      for (int64_t v = 0; v < kVecs; ++v) {
        const V sum = overwrite ? acc[r][v] : hn::Add(hn::LoadU(df, cr + v * kL), acc[r][v]);
        hn::StoreU(sum, df, cr + v * kL);
      }
    }
    return;
  }
  // A partial vector (the last columns of C): through memory, so that acc is indexed by constants
  // only and no load or store touches a column past N.
  HWY_ALIGN float tile[kRows * kVecs * kL];
  HWY_UNROLL(12)
  for (int64_t r = 0; r < kRows; ++r) {
    HWY_UNROLL(4)
    for (int64_t v = 0; v < kVecs; ++v) hn::Store(acc[r][v], df, tile + (r * kVecs + v) * kL);
  }
  for (int64_t r = 0; r < kRows; ++r) {
    float* cr = c + r * ldc;
    const float* tr = tile + r * kVecs * kL;
    for (int64_t j = 0; j < nr; ++j) cr[j] = overwrite ? tr[j] : cr[j] + tr[j];
  }
}

using MicroKernelFn = void (*)(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc,
                               int64_t nr, bool overwrite);

// kMicroKernels[v - 1][r - 1] = MicroKernel<r, v>.
template <int64_t kVecs, int64_t... kRowsLess1>
constexpr std::array<MicroKernelFn, kMR> KernelRow(std::integer_sequence<int64_t, kRowsLess1...>) {
  return {&MicroKernel<kRowsLess1 + 1, kVecs>...};
}
template <int64_t... kVecsLess1>
constexpr std::array<std::array<MicroKernelFn, kMR>, kNV> KernelTable(
    std::integer_sequence<int64_t, kVecsLess1...>) {
  return {KernelRow<kVecsLess1 + 1>(std::make_integer_sequence<int64_t, kMR>())...};
}
constexpr std::array<std::array<MicroKernelFn, kMR>, kNV> kMicroKernels =
    KernelTable(std::make_integer_sequence<int64_t, kNV>());

// ---- one thread's share -----------------------------------------------------------------------

struct GemmArgs {
  Trans ta, tb;
  int64_t M, N, K;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  bool accumulate;  // beta == 1
  float* c;
  int64_t ldc;
};

// C[m0:m1, n0:n1] of the product, on the calling thread.
void GemmRange(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t kc_max = std::min(kKC, g.K);
  const int64_t nc_max = std::min(kNC, (n1 - n0 + kNR - 1) / kNR * kNR);
  const int64_t mc_max = std::min(kMC, (m1 - m0 + kMR - 1) / kMR * kMR);
  float* bp = GemmScratch(kc_max * (nc_max + mc_max));  // Bp [nc_max / kNR][kc][kNR]
  float* ap = bp + kc_max * nc_max;                     // Ap [mc_max / kMR][kc][kMR]
  for (int64_t jc = n0; jc < n1; jc += kNC) {
    const int64_t nc = std::min(kNC, n1 - jc);
    for (int64_t pc = 0; pc < g.K; pc += kKC) {
      const int64_t kc = std::min(kKC, g.K - pc);
      const bool overwrite = !g.accumulate && pc == 0;
      PackB(g.tb, g.b, g.ldb, pc, kc, jc, nc, bp);
      for (int64_t ic = m0; ic < m1; ic += kMC) {
        const int64_t mc = std::min(kMC, m1 - ic);
        PackA(g.ta, g.a, g.lda, ic, mc, pc, kc, ap);
        for (int64_t ir = 0; ir < mc; ir += kMR) {
          const int64_t rows = std::min(kMR, mc - ir);
          const float* a_panel = ap + ir * kc;
          float* c_rows = g.c + (ic + ir) * g.ldc + jc;
          for (int64_t jr = 0; jr < nc; jr += kNR) {
            const int64_t cols = std::min(kNR, nc - jr);
            kMicroKernels[(cols + kL - 1) / kL - 1][rows - 1](kc, a_panel, bp + jr * kc,
                                                              c_rows + jr, g.ldc, cols, overwrite);
          }
        }
      }
    }
  }
}

// Fraction of the threads' time spent working when `tiles` tiles are split into nt nearly equal
// contiguous ranges.
double Balance(int64_t tiles, int64_t nt) {
  return static_cast<double>(tiles) / static_cast<double>(nt * ((tiles + nt - 1) / nt));
}

void SgemmImpl(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (beta != 0.0f && beta != 1.0f) {  // general beta: scale C first, then accumulate
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) c[m * ldc + n] *= beta;
    }
    beta = 1.0f;
  }
  if (K <= 0) {
    if (beta == 0.0f) {
      for (int64_t m = 0; m < M; ++m) std::fill(c + m * ldc, c + m * ldc + N, 0.0f);
    }
    return;
  }
  const GemmArgs g{ta, tb, M, N, K, a, lda, b, ldb, beta == 1.0f, c, ldc};
  const int64_t nt = NumThreads();
  if (nt <= 1 || M * N * K < kMinParallelMacs) {
    GemmRange(g, 0, M, 0, N);
    return;
  }
  // Rows unless columns balance better: a thread with all columns packs all of B, but its rows
  // of A only once per kNC columns, while every thread with a column range packs all of A.
  const int64_t tiles_m = (M + kMR - 1) / kMR, tiles_n = (N + kNR - 1) / kNR;
  if (Balance(tiles_m, nt) >= Balance(tiles_n, nt)) {
    ParallelFor(M, kMR, [&](int64_t m0, int64_t m1, int) { GemmRange(g, m0, m1, 0, N); });
  } else {
    ParallelFor(N, kNR, [&](int64_t n0, int64_t n1, int) { GemmRange(g, 0, M, n0, n1); });
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace dsv3::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv3::kernels {

float* GemmScratch(int64_t floats) {
  thread_local AlignedArray<float> scratch;  // grows to the largest block this thread has packed
  if (scratch.size() < static_cast<size_t>(floats)) {
    scratch.Resize(static_cast<size_t>(floats), /*zero=*/false);
  }
  return scratch.data();
}

HWY_EXPORT(SgemmImpl);

void Sgemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  HWY_DYNAMIC_DISPATCH(SgemmImpl)(ta, tb, M, N, K, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace dsv3::kernels
#endif  // HWY_ONCE
