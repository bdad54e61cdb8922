// AMX matrix products (see amx.h). Tile roles: C = 16 weight rows x 16 tokens (FP32),
// A = 16 weight rows x 32 k (BF16, row-major, straight from the converted weight rows),
// B = 32 k x 16 tokens in the VNNI layout AMX wants (row j holds the pairs (2j, 2j+1) of the 16
// tokens), prepared once per token chunk for each BF16 part of the activations (three, or one
// with MatMulPrecision::kBF16). Per k-step: two A tiles, and for each part two B tiles, feed four
// C tiles (32 rows x 32 tokens), so every loaded tile is used twice.
//
// This file is compiled for the baseline ISA; only functions marked DSV3_AMX_TARGET use AVX-512
// and AMX, and they run only after AmxSupported() said yes. No standard-library templates are
// instantiated inside them (an instantiation compiled for AVX-512 could be shared with code that
// runs anywhere).
#include "kernels/amx.h"

// GCC 12 warns inside its own AVX-512 headers ("__Y may be used uninitialized") when they inline.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace dsv3::kernels {
namespace {

#define DSV3_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

constexpr int64_t kTile = 16;  // rows (and tokens) per tile
constexpr int64_t kStep = 32;  // k per tile (BF16 pairs x 16)
constexpr int kParts = 3;      // BF16 parts of each activation (MatMulPrecision::kF32)
// Attention over a BF16 cache splits queries and probabilities in two parts: 2^-17 relative, far
// below the cache's own rounding (2^-9); one with MatMulPrecision::kBF16.
constexpr int kAttnParts = 2;

int GemmParts(MatMulPrecision p) { return p == MatMulPrecision::kBF16 ? 1 : kParts; }
int AttnParts(MatMulPrecision p) { return p == MatMulPrecision::kBF16 ? 1 : kAttnParts; }

// ---- support -----------------------------------------------------------------------------------

bool DetectAmx() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 17));  // F, BW, DQ
  const bool amx = (d & (1u << 22)) && (d & (1u << 24));                         // BF16, TILE
  if (!avx512 || !amx) return false;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;  // AVX512_BF16
  // Linux grants the 8 KiB tile state to a process on request (ARCH_REQ_XCOMP_PERM).
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

std::atomic<int> g_enabled{-1};  // -1: follow support

struct TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Per-thread buffers, grown with plain allocation outside the AVX-512 code.
struct Buffers {
  uint16_t* x = nullptr;  // [parts][token tiles][k steps][16 x 32] BF16
  size_t x_cap = 0;
  uint16_t* w = nullptr;  // [32 rows][Kp] BF16
  size_t w_cap = 0;
  bool configured = false;  // tiles configured on this thread
  ~Buffers() {              // at thread exit: pool workers come and go
    std::free(x);
    std::free(w);
  }
};
thread_local Buffers t_buf;

uint16_t* Grow(uint16_t*& p, size_t& cap, size_t n) {
  if (cap < n) {
    std::free(p);
    p = static_cast<uint16_t*>(std::aligned_alloc(64, (n * 2 + 63) / 64 * 64));
    cap = p ? n : 0;
  }
  return p;
}

// The next block of input (weight rows, cached rows) is fetched into L2 while this one computes,
// a share per k-step, so that reading it later does not stall with the tile units idle.
struct SpreadPrefetch {
  SpreadPrefetch(const void* p, int64_t bytes, int64_t steps)
      : next(static_cast<const char*>(p)),
        lines(bytes > 0 ? (bytes + 63) / 64 : 0),
        per_step((lines + steps - 1) / steps) {}
  void Step(int64_t step) const {
    const int64_t l0 = step * per_step, l1 = l0 + per_step < lines ? l0 + per_step : lines;
    for (int64_t line = l0; line < l1; ++line) _mm_prefetch(next + line * 64, _MM_HINT_T1);
  }
  const char* next;
  int64_t lines, per_step;
};

// ---- AVX-512 helpers ------------------------------------------------------------------------

// 32 E4M3 codes as BF16 bits, exactly: normal codes are the magnitude shifted into place plus
// the exponent rebias (7 -> 127); the 8 subnormal codes (and zero) come from a table; 0x7F / 0xFF
// become NaN.
DSV3_AMX_TARGET inline __m512i Fp8ToBf16x32(const uint8_t* src) {
  const __m512i code =
      _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  const __m512i mag = _mm512_and_si512(code, _mm512_set1_epi16(0x7F));
  __m512i v = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(0x3C00));
  // m * 2^-9 for m = 0..7 (positions 8..31 unused).
  const __m512i subnormals =
      _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  //
                       0x3C60, 0x3C40, 0x3C20, 0x3C00, 0x3BC0, 0x3B80, 0x3B00, 0);
  v = _mm512_mask_blend_epi16(_mm512_cmplt_epu16_mask(mag, _mm512_set1_epi16(8)), v,
                              _mm512_permutexvar_epi16(mag, subnormals));
  v = _mm512_mask_blend_epi16(_mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x7F)), v,
                              _mm512_set1_epi16(0x7FC0));
  return _mm512_or_si512(v, _mm512_slli_epi16(_mm512_and_si512(code, _mm512_set1_epi16(0x80)), 8));
}

// The same for 32 codes none of which is zero, subnormal or NaN (nearly every block of real
// weights), in four instructions: sign-extended to 16 bits and shifted left by 4, the magnitude
// lies in BF16's exponent/mantissa field and the sign in bit 15 (its copy in bit 11 is masked
// off); adding 120 << 7 rebiases the exponent.
DSV3_AMX_TARGET inline __m512i Fp8NormalToBf16x32(const uint8_t* src) {
  const __m512i code =
      _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return _mm512_add_epi16(_mm512_and_si512(_mm512_slli_epi16(code, 4), _mm512_set1_epi16(0x87FF)),
                          _mm512_set1_epi16(0x3C00));
}

// Weight rows r .. r + n - 1 (n <= 32) as BF16 into w[32][ld] (columns Kp .. ld unused),
// zero-padded in rows and columns. Exact: E4M3 and BF16 values are all representable.
DSV3_AMX_TARGET void ConvertRows(const WeightMatrix& m, int64_t r, int64_t n, int64_t Kp,
                                 int64_t ld, uint16_t* w) {
  const int64_t K = m.cols, esize = static_cast<int64_t>(DTypeSize(m.dtype));
  for (int64_t i = 0; i < 2 * kTile; ++i) {
    uint16_t* dst = w + i * ld;
    if (i >= n) {
      std::memset(dst, 0, static_cast<size_t>(Kp) * 2);
      continue;
    }
    const void* row = static_cast<const uint8_t*>(m.data) + (r + i) * K * esize;
    int64_t k = 0;
    if (m.dtype == DType::kBF16) {
      std::memcpy(dst, row, static_cast<size_t>(K) * 2);
      k = K;
    } else {
      const uint8_t* codes = static_cast<const uint8_t*>(row);
      for (; k + 64 <= K; k += 64) {
        // Any zero / subnormal (magnitude < 8) or NaN (0x7F) code among these 64?
        const __m512i mag = _mm512_and_si512(
            _mm512_loadu_si512(reinterpret_cast<const void*>(codes + k)), _mm512_set1_epi8(0x7F));
        if ((_mm512_cmplt_epu8_mask(mag, _mm512_set1_epi8(8)) |
             _mm512_cmpeq_epi8_mask(mag, _mm512_set1_epi8(0x7F))) == 0) {
          _mm512_storeu_si512(dst + k, Fp8NormalToBf16x32(codes + k));
          _mm512_storeu_si512(dst + k + 32, Fp8NormalToBf16x32(codes + k + 32));
        } else {
          _mm512_storeu_si512(dst + k, Fp8ToBf16x32(codes + k));
          _mm512_storeu_si512(dst + k + 32, Fp8ToBf16x32(codes + k + 32));
        }
      }
      for (; k + 32 <= K; k += 32) _mm512_storeu_si512(dst + k, Fp8ToBf16x32(codes + k));
      for (; k < K; ++k) {  // a ragged end
        const float v = E4M3ToF32(static_cast<const uint8_t*>(row)[k]);
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        dst[k] = static_cast<uint16_t>(bits >> 16);  // exact: E4M3 values fit in BF16
      }
    }
    for (; k < Kp; ++k) dst[k] = 0;
  }
}

// Transposes 16 rows of 16 dwords in place: rows[i][j] -> rows[j][i].
DSV3_AMX_TARGET inline void Transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Now r[4a + b] holds, in each 128-bit lane L, elements (rows 4a..4a+3) x (column 4L + b').
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

// x = p0 + p1 + p2 with each part in BF16, rounded to nearest from the remainder (exact for normal
// floats): returns the next part of the 32 values [lo | hi] and leaves the remainder in lo, hi.
DSV3_AMX_TARGET inline __m512i NextPart(__m512& lo, __m512& hi) {
  const __m512bh b = _mm512_cvtne2ps_pbh(hi, lo);
  const __m512i bits = reinterpret_cast<const __m512i&>(b);
  const __m512 blo = _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(bits)), 16));
  const __m512 bhi = _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(bits, 1)), 16));
  lo = _mm512_sub_ps(lo, blo);
  hi = _mm512_sub_ps(hi, bhi);
  return bits;
}

// Activations of nt <= 16 * TT tokens into B tiles: x_tiles[part][tt][ks] is the 16 x 32 BF16
// (VNNI) tile of token tile tt, k-step ks, for the part-th BF16 part of the values.
DSV3_AMX_TARGET void PrepareActivations(const float* x, int64_t x_stride, int64_t nt, int64_t K,
                                        int64_t TT, int64_t KS, uint16_t* out, int parts = kParts) {
  const size_t tile = kTile * kStep;  // BF16 elements per tile
  for (int64_t tt = 0; tt < TT; ++tt) {
    for (int64_t ks = 0; ks < KS; ++ks) {
      __m512i parts_of[kParts][16];
      for (int64_t n = 0; n < kTile; ++n) {
        const int64_t token = tt * kTile + n;
        const int64_t k = ks * kStep;
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        if (token < nt) {
          const float* src = x + token * x_stride + k;
          const int64_t left = K - k;
          const __mmask16 mlo = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
          const __mmask16 mhi =
              left >= 32 ? 0xFFFF
                         : (left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1));
          lo = _mm512_maskz_loadu_ps(mlo, src);
          hi = _mm512_maskz_loadu_ps(mhi, src + 16);
        }
        for (int p = 0; p < parts; ++p) parts_of[p][n] = NextPart(lo, hi);
      }
      // Token n's dword j is the pair (2j, 2j+1); the tile wants row j = the 16 tokens' pairs.
      for (int p = 0; p < parts; ++p) {
        Transpose16x16(parts_of[p]);
        uint16_t* dst = out + ((p * TT + tt) * KS + ks) * tile;
        for (int j = 0; j < 16; ++j) _mm512_storeu_si512(dst + j * kStep, parts_of[p][j]);
      }
    }
  }
}

// All eight tiles 16 rows x 64 bytes, once per thread.
DSV3_AMX_TARGET void ConfigureTiles() {
  if (t_buf.configured) return;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = kTile;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  t_buf.configured = true;
}

// C tiles 0..3 = (row tile 0, token tile 0), (0, 1), (1, 0), (1, 1); A tiles 4, 5; B tiles 6, 7.
// parts: BF16 parts per activation (1..3).
DSV3_AMX_TARGET void Gemm(const WeightMatrix& m, int64_t r0, int64_t r1, const float* x,
                          int64_t x_stride, int64_t T, float* y, int64_t y_stride, int parts) {
  Buffers& b = t_buf;
  ConfigureTiles();
  const int64_t K = m.cols, Kp = (K + kStep - 1) / kStep * kStep, KS = Kp / kStep;
  // Row stride of the converted weights: one cache line more than Kp, so that the 16 rows of an A
  // tile fall in different L1 sets (at 4 KiB strides they would all share one and miss).
  const int64_t ld = Kp + kStep;
  const bool fp8 = m.dtype == DType::kF8E4M3;
  const int64_t block_steps = fp8 ? m.block_cols / kStep : KS;  // k-steps per scale block
  // Tokens per activation pass: the prepared activations stay about the same size whatever the
  // parts, so fewer parts convert each weight row block once for more tokens.
  const int64_t chunk = (K <= 4096 ? 64 : 32) * (kParts / parts);
  const size_t tile = kTile * kStep;
  alignas(64) float acc[4][kTile][kTile];
  alignas(64) float part[kTile][kTile];

  for (int64_t c0 = 0; c0 < T; c0 += chunk) {
    const int64_t nt = chunk < T - c0 ? chunk : T - c0;
    const int64_t TT = ((nt + kTile - 1) / kTile + 1) / 2 * 2;  // token tiles, even
    uint16_t* xt = Grow(b.x, b.x_cap, static_cast<size_t>(parts * TT * KS) * tile);
    uint16_t* wt = Grow(b.w, b.w_cap, static_cast<size_t>(2 * kTile * ld));
    if (xt == nullptr || wt == nullptr) __builtin_trap();  // out of memory
    PrepareActivations(x + c0 * x_stride, x_stride, nt, K, TT, KS, xt, parts);
    for (int64_t rb = r0; rb < r1; rb += 2 * kTile) {
      const int64_t nr = r1 - rb < 2 * kTile ? r1 - rb : 2 * kTile;
      ConvertRows(m, rb, nr, Kp, ld, wt);
      // Each row's block-scale row (FP8); padding rows reuse the last real row's.
      const float* scale_row[2 * kTile];
      for (int64_t i = 0; i < 2 * kTile && fp8; ++i) {
        const int64_t row = rb + (i < nr ? i : nr - 1);
        scale_row[i] = m.scale + (row / m.block_rows) * m.scale_cols;
      }
      // The next 32 rows as stored, for their conversion.
      const int64_t esize = static_cast<int64_t>(DTypeSize(m.dtype));
      const int64_t next_rows = r1 - rb - 2 * kTile < 2 * kTile ? r1 - rb - 2 * kTile : 2 * kTile;
      const SpreadPrefetch prefetch(static_cast<const char*>(m.data) + (rb + 2 * kTile) * K * esize,
                                    next_rows * K * esize, KS);
      for (int64_t tt = 0; tt < TT; tt += 2) {
        // An odd last token tile (48 tokens: three) runs alone: C1, C3 and B7 sit idle.
        const bool pair = (tt + 1) * kTile < nt;
        std::memset(acc, 0, sizeof(acc));
        for (int64_t kb = 0; kb < KS; kb += block_steps) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t ks = kb; ks < kb + block_steps && ks < KS; ++ks) {
            if (tt == 0) prefetch.Step(ks);
            _tile_loadd(4, wt + ks * kStep, ld * 2);
            _tile_loadd(5, wt + kTile * ld + ks * kStep, ld * 2);
            for (int p = 0; p < parts; ++p) {
              _tile_loadd(6, xt + ((p * TT + tt) * KS + ks) * tile, 64);
              _tile_dpbf16ps(0, 4, 6);
              _tile_dpbf16ps(2, 5, 6);
              if (pair) {
                _tile_loadd(7, xt + ((p * TT + tt + 1) * KS + ks) * tile, 64);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(3, 5, 7);
              }
            }
          }
          // Fold this block's partial sums into the accumulators, times each row's block scale.
          for (int c = 0; c < 4; ++c) {
            if ((c & 1) && !pair) continue;
            switch (c) {
              case 0:
                _tile_stored(0, part, 64);
                break;
              case 1:
                _tile_stored(1, part, 64);
                break;
              case 2:
                _tile_stored(2, part, 64);
                break;
              default:
                _tile_stored(3, part, 64);
                break;
            }
            const int64_t kblock = kb / block_steps;
            for (int i = 0; i < kTile; ++i) {
              const float s = fp8 ? scale_row[(c >> 1) * kTile + i][kblock] : 1.0f;
              _mm512_store_ps(acc[c][i], _mm512_fmadd_ps(_mm512_load_ps(part[i]), _mm512_set1_ps(s),
                                                         _mm512_load_ps(acc[c][i])));
            }
          }
        }
        // acc[c][row i][token j] -> y[token][row]: transposed in registers, one (masked) store of
        // up to 16 rows per token.
        for (int c = 0; c < 4; ++c) {
          const int64_t row0 = (c >> 1) * kTile, tok0 = c0 + (tt + (c & 1)) * kTile;
          if (row0 >= nr || tok0 >= c0 + nt) continue;
          __m512i v[kTile];
          for (int64_t i = 0; i < kTile; ++i) v[i] = _mm512_load_si512(acc[c][i]);
          Transpose16x16(v);
          const int64_t rows = nr - row0 < kTile ? nr - row0 : kTile;
          const __mmask16 mask = static_cast<__mmask16>((1u << rows) - 1);
          for (int64_t j = 0; j < kTile && tok0 + j < c0 + nt; ++j) {
            _mm512_mask_storeu_ps(y + (tok0 + j) * y_stride + (rb - r0) + row0, mask,
                                  _mm512_castsi512_ps(v[j]));
          }
        }
      }
    }
  }
}

// e^x for x <= 0 (and NaN), to about 2 ulp: 2^n * e^r with |r| <= ln2 / 2 and a degree-7
// polynomial; arguments below -87 give e^-87 (the running-softmax rescale of a -inf maximum).
DSV3_AMX_TARGET inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

constexpr int64_t kAttnRows = 64;  // cached rows per attention block

// Columns [d0, d0 + 32) of the 64 rows of an attention block (ld elements apart) as four VNNI
// pair tiles: out + kk * tile for columns d0.., out + (2 + kk) * tile for d0 + 16.., where row i
// of tile kk interleaves rows 32kk + 2i and 32kk + 2i + 1.
DSV3_AMX_TARGET inline void InterleavePairs(const uint16_t* blk, int64_t ld, int64_t d0,
                                            __m512i idx_lo, __m512i idx_hi, uint16_t* out) {
  const int64_t tile = kTile * kStep;
  for (int64_t i = 0; i < kAttnRows / 2; ++i) {
    const uint16_t* r0 = blk + 2 * i * ld + d0;
    uint16_t* dst = out + (i / kTile) * tile + (i % kTile) * kStep;
    const __m512i a = _mm512_loadu_si512(r0), b = _mm512_loadu_si512(r0 + ld);
    _mm512_store_si512(dst, _mm512_permutex2var_epi16(a, idx_lo, b));
    _mm512_store_si512(dst + 2 * tile, _mm512_permutex2var_epi16(a, idx_hi, b));
  }
}

// Per block of 64 cached rows: (1) the rows' first C values as VNNI pair tiles (row i of tile
// (dt, kk) interleaves rows 32kk + 2i and 32kk + 2i + 1 at columns 16dt ..); then per tile of 16
// heads (2) scores^T [64 rows, 16 heads] = rows (A, straight from the cache) x queries (B,
// prepared), (3) the online softmax down each head's column, (4) the probabilities transposed to
// [16 heads, 64 rows] in two BF16 parts (A tiles, 32 rows each), (5) o [16 heads, C] += P x
// latents, two 16-column tiles at a time. Independent accumulators are interleaved so that the
// tile products overlap: scores C0..C3 / A4, A5 / B6, B7; PV A0..A3 / C4, C5 / B6, B7.
// parts: 2, or 1 to use only the first BF16 part of the queries and of the probabilities.
DSV3_AMX_TARGET void LatentAttention(const uint16_t* qt, int64_t H, int64_t W, int64_t C,
                                     const uint16_t* rows, int64_t n, float scale, float* m,
                                     float* l, float* o, int64_t ldo, uint8_t* scratch, int parts) {
  const bool two = parts > 1;
  const int64_t HT = (H + kTile - 1) / kTile, KS = (W + kStep - 1) / kStep, Wp = KS * kStep;
  const int64_t CT = C / kTile;
  const int64_t tile = kTile * kStep;                                  // BF16 elements per tile
  float* sT = reinterpret_cast<float*>(scratch);                       // [64, 16]
  uint16_t* pa = reinterpret_cast<uint16_t*>(sT + kAttnRows * kTile);  // [2 kk][2 parts][tile]
  uint16_t* vt = pa + 4 * tile;                                        // [CT][2 kk][tile]
  uint16_t* padded = vt + 2 * CT * tile;                               // [64, Wp]
  ConfigureTiles();
  // Output index j of the pair interleave takes element j / 2 of row 2i (j even) or 2i + 1 (odd);
  // lo covers columns 0..15 of the 32 loaded, hi 16..31.
  alignas(64) uint16_t ilo[32], ihi[32];
  for (int j = 0; j < 32; ++j) {
    ilo[j] = static_cast<uint16_t>(j / 2 + (j % 2 ? 32 : 0));
    ihi[j] = static_cast<uint16_t>(16 + j / 2 + (j % 2 ? 32 : 0));
  }
  const __m512i idx_lo = _mm512_load_si512(ilo), idx_hi = _mm512_load_si512(ihi);
  const __m512 vscale = _mm512_set1_ps(scale);

  for (int64_t b0 = 0; b0 < n; b0 += kAttnRows) {
    const int64_t nb = n - b0 < kAttnRows ? n - b0 : kAttnRows;
    const uint16_t* blk = rows + b0 * W;
    int64_t ld = W;                   // elements between rows
    if (nb < kAttnRows || Wp != W) {  // ragged: zero-padded copy (columns to Wp, rows to 64)
      for (int64_t r = 0; r < kAttnRows; ++r) {
        uint16_t* dst = padded + r * Wp;
        if (r < nb) {
          std::memcpy(dst, blk + r * W, static_cast<size_t>(W) * 2);
          std::memset(dst + W, 0, static_cast<size_t>(Wp - W) * 2);
        } else {
          std::memset(dst, 0, static_cast<size_t>(Wp) * 2);
        }
      }
      blk = padded;
      ld = Wp;
    }
    // (1) for every head tile at once; with one head tile each column pair is interleaved just
    // before its products instead, so the 64 KiB of pair tiles never leave L1.
    const bool fused = HT == 1;
    for (int64_t d0 = 0; d0 < C && !fused; d0 += 2 * kTile)
      InterleavePairs(blk, ld, d0, idx_lo, idx_hi, vt + d0 / kTile * 2 * tile);
    const int64_t stride = ld * 2;  // bytes
    // The next block's rows, for its steps (1) and (2).
    const int64_t next_rows = n - b0 - kAttnRows < kAttnRows ? n - b0 - kAttnRows : kAttnRows;
    const SpreadPrefetch prefetch(rows + (b0 + kAttnRows) * W, next_rows * W * 2, KS);
    for (int64_t ht = 0; ht < HT; ++ht) {
      _tile_zero(0);  // (2)
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t ks = 0; ks < KS; ++ks) {
        const uint16_t* a = blk + ks * kStep;
        if (ht == 0) prefetch.Step(ks);
        _tile_loadd(6, qt + ((0 * HT + ht) * KS + ks) * tile, 64);
        if (two) _tile_loadd(7, qt + ((1 * HT + ht) * KS + ks) * tile, 64);
        _tile_loadd(4, a, stride);
        _tile_loadd(5, a + kTile * ld, stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 5, 6);
        if (two) {
          _tile_dpbf16ps(0, 4, 7);
          _tile_dpbf16ps(1, 5, 7);
        }
        _tile_loadd(4, a + 2 * kTile * ld, stride);
        _tile_loadd(5, a + 3 * kTile * ld, stride);
        _tile_dpbf16ps(2, 4, 6);
        _tile_dpbf16ps(3, 5, 6);
        if (two) {
          _tile_dpbf16ps(2, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, sT, 64);
      _tile_stored(1, sT + kTile * kTile, 64);
      _tile_stored(2, sT + 2 * kTile * kTile, 64);
      _tile_stored(3, sT + 3 * kTile * kTile, 64);

      float* mh = m + ht * kTile;  // (3)
      float* lh = l + ht * kTile;
      const __m512 m_old = _mm512_loadu_ps(mh);
      __m512 m_new = m_old;
      for (int64_t r = 0; r < nb; ++r) {
        const __m512 s = _mm512_mul_ps(_mm512_load_ps(sT + r * kTile), vscale);
        _mm512_store_ps(sT + r * kTile, s);
        m_new = _mm512_max_ps(m_new, s);
      }
      const __m512 corr = ExpNonPositive(_mm512_sub_ps(m_old, m_new));
      __m512 sum = _mm512_setzero_ps();
      __m512i pr[kAttnRows];
      for (int64_t r = 0; r < kAttnRows; ++r) {
        __m512 p = _mm512_setzero_ps();
        if (r < nb) p = ExpNonPositive(_mm512_sub_ps(_mm512_load_ps(sT + r * kTile), m_new));
        sum = _mm512_add_ps(sum, p);
        pr[r] = _mm512_castps_si512(p);
      }
      _mm512_storeu_ps(mh, m_new);
      _mm512_storeu_ps(lh, _mm512_fmadd_ps(_mm512_loadu_ps(lh), corr, sum));
      const __mmask16 grew = _mm512_cmp_ps_mask(corr, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ);
      if (grew) {
        alignas(64) float cv[kTile];
        _mm512_store_ps(cv, corr);
        for (int64_t h = 0; h < kTile; ++h) {
          if (!(grew >> h & 1)) continue;
          float* oh = o + (ht * kTile + h) * ldo;
          const __m512 f = _mm512_set1_ps(cv[h]);
          for (int64_t j = 0; j < C; j += kTile)
            _mm512_storeu_ps(oh + j, _mm512_mul_ps(f, _mm512_loadu_ps(oh + j)));
        }
      }
      for (int64_t q4 = 0; q4 < 4; ++q4) Transpose16x16(pr + q4 * kTile);  // (4)
      for (int64_t kk = 0; kk < 2; ++kk) {  // pr[16 q4 + h]: rows 16 q4 .. of head h
        for (int64_t h = 0; h < kTile; ++h) {
          __m512 lo = _mm512_castsi512_ps(pr[2 * kk * kTile + h]);
          __m512 hi = _mm512_castsi512_ps(pr[(2 * kk + 1) * kTile + h]);
          for (int p = 0; p < parts; ++p)
            _mm512_store_si512(pa + (kk * 2 + p) * tile + h * kStep, NextPart(lo, hi));
        }
      }
      _tile_loadd(0, pa, 64);  // (5)
      if (two) _tile_loadd(1, pa + tile, 64);
      _tile_loadd(2, pa + 2 * tile, 64);
      if (two) _tile_loadd(3, pa + 3 * tile, 64);
      for (int64_t dt = 0; dt < CT; dt += 2) {
        float* oc = o + ht * kTile * ldo + dt * kTile;
        const uint16_t* v = vt + dt * 2 * tile;  // (dt, 0), (dt, 1), (dt + 1, 0), (dt + 1, 1)
        if (fused) {
          InterleavePairs(blk, ld, dt * kTile, idx_lo, idx_hi, vt);
          v = vt;
        }
        _tile_loadd(4, oc, ldo * 4);
        _tile_loadd(5, oc + kTile, ldo * 4);
        _tile_loadd(6, v, 64);
        _tile_loadd(7, v + 2 * tile, 64);
        _tile_dpbf16ps(4, 0, 6);
        _tile_dpbf16ps(5, 0, 7);
        if (two) {
          _tile_dpbf16ps(4, 1, 6);
          _tile_dpbf16ps(5, 1, 7);
        }
        _tile_loadd(6, v + tile, 64);
        _tile_loadd(7, v + 3 * tile, 64);
        _tile_dpbf16ps(4, 2, 6);
        _tile_dpbf16ps(5, 2, 7);
        if (two) {
          _tile_dpbf16ps(4, 3, 6);
          _tile_dpbf16ps(5, 3, 7);
        }
        _tile_stored(4, oc, ldo * 4);
        _tile_stored(5, oc + kTile, ldo * 4);
      }
    }
  }
}

}  // namespace

bool AmxLatentAttentionSupported(int64_t H, int64_t W, int64_t C) {
  return AmxEnabled() && H > 0 && W % 2 == 0 && C > 0 && C % 32 == 0 && C <= W;
}

int64_t AmxLatentQueryElements(int64_t H, int64_t W) {
  return kAttnParts * ((H + kTile - 1) / kTile) * ((W + kStep - 1) / kStep) * kTile * kStep;
}

int64_t AmxLatentScratchBytes(int64_t W, int64_t C) {
  const int64_t Wp = (W + kStep - 1) / kStep * kStep;
  return 4 * kAttnRows * kTile + 2 * (4 + 2 * C / kTile) * kTile * kStep + 2 * kAttnRows * Wp;
}

void AmxPrepareLatentQueries(const float* q, int64_t H, int64_t W, uint16_t* tiles) {
  PrepareActivations(q, W, H, W, (H + kTile - 1) / kTile, (W + kStep - 1) / kStep, tiles,
                     kAttnParts);
}

void AmxLatentAttention(const uint16_t* q_tiles, int64_t H, int64_t W, int64_t C,
                        const uint16_t* rows, int64_t n, float scale, float* m, float* l, float* o,
                        int64_t o_stride, void* scratch, MatMulPrecision precision) {
  LatentAttention(q_tiles, H, W, C, rows, n, scale, m, l, o, o_stride,
                  static_cast<uint8_t*>(scratch), AttnParts(precision));
}

bool AmxSupported() {
  static const bool supported = DetectAmx();
  return supported;
}

bool AmxEnabled() {
  const int e = g_enabled.load(std::memory_order_relaxed);
  return e < 0 ? AmxSupported() : (e == 1 && AmxSupported());
}

void SetAmxEnabled(bool enabled) { g_enabled.store(enabled ? 1 : 0); }

bool AmxHandles(const WeightMatrix& w) {
  if (!AmxEnabled()) return false;
  if (w.dtype == DType::kBF16) return true;
  return w.dtype == DType::kF8E4M3 && w.block_cols % kStep == 0 && w.block_rows % kTile == 0;
}

bool AmxMatMulRows(const WeightMatrix& w, int64_t r0, int64_t r1, const float* x, int64_t x_stride,
                   int64_t T, float* y, int64_t y_stride, MatMulPrecision precision) {
  if (!AmxHandles(w)) return false;
  Gemm(w, r0, r1, x, x_stride, T, y, y_stride, GemmParts(precision));
  return true;
}

}  // namespace dsv3::kernels
