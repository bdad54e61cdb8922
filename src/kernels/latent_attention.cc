#include "kernels/latent_attention.h"

#include <algorithm>
#include <cmath>

#include "core/aligned.h"
#include "core/parallel.h"
#include "kernels/amx.h"
#include "kernels/attention.h"
#include "kernels/ops.h"

namespace dsv3::kernels {
namespace {
constexpr int64_t kKeyBlock = 256;  // cached rows per attention block
// Row stride of a part's outputs [Hp, C]: 16 floats more than C, so that the rows of an AMX tile
// over them do not share an L1 set when C is a power of two.
int64_t OStride(int64_t C) { return C + 16; }

// Scratch layout: the AMX query tiles (shared), then one block of floats per thread: scores
// [H, kKeyBlock], m [Hp], l [Hp], outputs [Hp, OStride(C)], and the conversion area (a block of
// BF16 rows as float32, or the AMX kernel's scratch).
struct Layout {
  int64_t tile_floats = 0;    // the query tiles, in floats
  int64_t state_floats = 0;   // scores, m, l, outputs of one part
  int64_t thread_floats = 0;  // state + conversion area of one part

  Layout(const LatentAttentionShape& s, DType type) {
    const int64_t H = s.heads, W = s.width, C = s.latent, Hp = PadFloats(H);
    state_floats = PadFloats(H * kKeyBlock) + 2 * Hp + Hp * OStride(C);
    int64_t convert = 0;
    if (type == DType::kBF16) {
      convert = PadFloats(kKeyBlock * W);
      if (AmxSupported()) {
        tile_floats = PadFloats((AmxLatentQueryElements(H, W) + 1) / 2);
        convert = std::max(convert, PadFloats((AmxLatentScratchBytes(W, C) + 3) / 4));
      }
    }
    thread_floats = state_floats + convert;
  }
};

struct Part {
  float *scores, *m, *l, *o, *convert;
};
Part PartOf(const Layout& layout, const LatentAttentionShape& s, float* base, int p) {
  float* scores = base + layout.tile_floats + p * layout.thread_floats;
  float* m = scores + PadFloats(s.heads * kKeyBlock);
  float* l = m + PadFloats(s.heads);
  float* o = l + PadFloats(s.heads);
  return {scores, m, l, o, scores + layout.state_floats};
}
}  // namespace

size_t LatentAttentionScratchBytes(const LatentAttentionShape& shape, DType type, int threads) {
  const Layout layout(shape, type);
  return sizeof(float) *
         static_cast<size_t>(layout.tile_floats + std::max(threads, 1) * layout.thread_floats);
}

void LatentAttention(const LatentAttentionShape& shape, const float* q, const LatentRows& rows,
                     float scale, MatMulPrecision precision, float* out, int64_t out_stride,
                     void* scratch) {
  const int64_t H = shape.heads, W = shape.width, C = shape.latent, S = rows.n;
  const int64_t Hp = PadFloats(H), os = OStride(C);
  const Layout layout(shape, rows.type);
  float* base = static_cast<float*>(scratch);
  uint16_t* q_tiles = reinterpret_cast<uint16_t*>(base);
  const bool bf16 = rows.type == DType::kBF16;
  // A BF16 cache on AMX: the queries as tiles, once.
  const bool amx = bf16 && layout.tile_floats > 0 && AmxLatentAttentionSupported(H, W, C);
  if (amx) AmxPrepareLatentQueries(q, H, W, q_tiles);

  const int64_t blocks = (S + kKeyBlock - 1) / kKeyBlock;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(NumThreads(), blocks));
  ParallelFor(S, kKeyBlock, [&](int64_t s0, int64_t s1, int p) {
    const Part part = PartOf(layout, shape, base, p);
    std::fill(part.m, part.m + Hp, -INFINITY);
    std::fill(part.l, part.l + Hp, 0.0f);
    std::fill(part.o, part.o + Hp * os, 0.0f);
    if (amx) {
      AmxLatentAttention(q_tiles, H, W, C, static_cast<const uint16_t*>(rows.data) + s0 * W,
                         s1 - s0, scale, part.m, part.l, part.o, os, part.convert, precision);
      return;
    }
    for (int64_t b0 = s0; b0 < s1; b0 += kKeyBlock) {
      const int64_t nb = std::min(kKeyBlock, s1 - b0);
      const float* block = static_cast<const float*>(rows.data) + b0 * W;  // [nb, W]
      if (bf16) {
        BF16ToF32(static_cast<const uint16_t*>(rows.data) + b0 * W, nb * W, part.convert);
        block = part.convert;
      }
      QKScores(q, W, H, block, W, nb, W, scale, part.scores);
      for (int64_t h = 0; h < H; ++h) {
        const float correction = OnlineSoftmax(part.scores + h * nb, nb, part.m[h], part.l[h]);
        if (correction != 1.0f) Scale(correction, part.o + h * os, C);
      }
      PVAccumulate(part.scores, H, nb, block, W, C, part.o, os);  // values: the latents
    }
  });

  // Merge the parts per head into out[h].
  auto merge = [&](int64_t h0, int64_t h1, int) {
    for (int64_t h = h0; h < h1; ++h) {
      float m = PartOf(layout, shape, base, 0).m[h];
      for (int p = 1; p < parts; ++p) m = std::max(m, PartOf(layout, shape, base, p).m[h]);
      float l = 0;
      float* merged = out + h * out_stride;
      for (int p = 0; p < parts; ++p) {
        const Part part = PartOf(layout, shape, base, p);
        const float f = std::exp(part.m[h] - m);
        l += part.l[h] * f;
        if (p == 0) {
          for (int64_t j = 0; j < C; ++j) merged[j] = part.o[h * os + j] * f;
        } else {
          Axpy(f, part.o + h * os, merged, C);
        }
      }
      Scale(1.0f / l, merged, C);
    }
  };
  if (parts == 1) {
    merge(0, H, 0);
  } else {
    ParallelFor(H, 1, merge);
  }
}

}  // namespace dsv3::kernels
