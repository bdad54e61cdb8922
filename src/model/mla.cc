// MLA (DeepSeek-V2 section 2.1): queries through an optional low-rank bottleneck, keys and values
// through one shared latent c_kv per token plus one shared RoPE key k_pe. Only [c_kv | k_pe] is
// cached. With W_uk / W_uv the per-head slices of kv_b_proj:
//   score[h][s] = (q_nope[h] . W_uk[h] c_kv[s] + q_pe[h] . k_pe[s]) * softmax_scale
//               = ([W_uk[h]^T q_nope[h] | q_pe[h]] . [c_kv[s] | k_pe[s]]) * softmax_scale
//   out[h]      = sum_s p[h][s] W_uv[h] c_kv[s] = W_uv[h] (sum_s p[h][s] c_kv[s])
// so the absorbed form touches each cached row once per head with C + R wide dot products and
// never materializes per-head keys or values.
#include "model/mla.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>

#include "core/parallel.h"
#include "kernels/amx.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {
int64_t Pad16(int64_t n) { return (n + 15) / 16 * 16; }
// Row stride of a thread's absorbed outputs [Hp, C]: 16 floats more than C, so that the rows of an
// AMX tile over them do not share an L1 set when C is a power of two.
int64_t OStride(int64_t C) { return C + 16; }
constexpr int64_t kKeyBlock = 256;  // cached tokens per attention block
}  // namespace

Mla::Mla(const Config& c, const RopeTable& rope, int64_t max_batch, int64_t capacity,
         AttentionImpl impl, KvCacheType kv)
    : c_(c), rope_(rope), impl_(impl), kv_(kv), max_batch_(max_batch), capacity_(capacity) {
  const int64_t B = max_batch, H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t NR = c.qk_head_dim(), V = c.v_head_dim;
  cos_.Resize(B * c.qk_rope_head_dim / 2);
  sin_.Resize(B * c.qk_rope_head_dim / 2);
  q_a_.Resize(B * std::max<int64_t>(c.q_lora_rank, 1));
  q_.Resize(B * H * NR);
  kv_a_.Resize(B * c.kv_width());
  heads_.Resize(B * H * V);
  q_lat_.Resize(H * c.kv_width());
  segments_.reserve(static_cast<size_t>(B));
  // Absorbed: scores [H, kKeyBlock], m and l [Hp], outputs [Hp, C] (Hp: H rounded up to 16, as
  // the AMX kernel wants).
  const int64_t absorbed = Pad16(H * kKeyBlock) + 2 * Pad16(H) + Pad16(H) * OStride(C);
  // Expanded: keys [kKeyBlock, N+R], values [kKeyBlock, V], scores [4, kKeyBlock], m and l [B],
  // outputs [B, V].
  const int64_t expanded = Pad16(kKeyBlock * NR) + Pad16(kKeyBlock * V) + Pad16(4 * kKeyBlock) +
                           2 * Pad16(B) + Pad16(B * V);
  convert_offset_ = std::max(absorbed, expanded);
  thread_stride_ = convert_offset_;
  if (kv_ == KvCacheType::kBF16) {
    // A key block converted to float32 [kKeyBlock, C+R], or the AMX kernel's scratch.
    int64_t extra = Pad16(kKeyBlock * c.kv_width());
    if (kernels::AmxSupported()) {
      q_tiles_.Resize(static_cast<size_t>(kernels::AmxLatentQueryElements(H, c.kv_width())));
      extra = std::max(extra, Pad16((kernels::AmxLatentScratchBytes(c.kv_width(), C) + 3) / 4));
    }
    thread_stride_ += extra;
  }
  threads_ = NumThreads();
  thread_scratch_.Resize(static_cast<size_t>(thread_stride_ * threads_));
}

size_t Mla::scratch_bytes() const {
  return sizeof(float) * (cos_.size() + sin_.size() + q_a_.size() + q_.size() + kv_a_.size() +
                          heads_.size() + q_lat_.size() + thread_scratch_.size()) +
         sizeof(uint16_t) * q_tiles_.size();
}

void Mla::SetTokens(const int64_t* positions, const int32_t* slots, int64_t T) {
  positions_ = positions;
  slots_ = slots;
  T_ = T;
  const int64_t half = c_.qk_rope_head_dim / 2;
  segments_.clear();
  for (int64_t t = 0; t < T; ++t) {
    rope_.Angles(positions[t], cos_.data() + t * half, sin_.data() + t * half);
    if (t > 0 && slots[t] == slots[t - 1] && positions[t] == positions[t - 1] + 1) {
      ++segments_.back().count;
    } else {
      segments_.push_back({t, 1});
    }
  }
}

// Multiply-adds of each form for a segment (see the file comment), to pick the cheaper.
bool Mla::UseAbsorbed(const Segment& seg) const {
  if (impl_ != AttentionImpl::kAuto) return impl_ == AttentionImpl::kAbsorbed;
  const double N = static_cast<double>(c_.qk_nope_head_dim), V = static_cast<double>(c_.v_head_dim);
  const double C = static_cast<double>(c_.kv_lora_rank),
               R = static_cast<double>(c_.qk_rope_head_dim);
  const double start = static_cast<double>(positions_[seg.first]);
  const double T = static_cast<double>(seg.count), S = start + T;
  const double attended = T * (start + (T + 1) / 2);  // causal (t, s) pairs
  const double absorbed = T * (N + V) * C + attended * (2 * C + R);
  const double expanded = S * (N + V) * C + attended * (N + R + V);
  return absorbed <= expanded;
}

void Mla::Forward(const MlaWeights& w, int64_t layer, const float* xn, KvCache& cache, float* out,
                  ForwardTrace* trace, const std::string& trace_name, kernels::MatMulPath path) {
  const int64_t T = T_, D = c_.hidden_size, H = c_.num_attention_heads;
  const int64_t C = c_.kv_lora_rank, R = c_.qk_rope_head_dim, NR = c_.qk_head_dim();
  const std::string name = trace ? trace_name + ".mla." : "";
  if (NumThreads() > threads_) {  // the thread count grew since construction (not in steady state)
    threads_ = NumThreads();
    thread_scratch_.Resize(static_cast<size_t>(thread_stride_ * threads_));
  }
  std::optional<PhaseTimer> timer(std::in_place, profile_, Phase::kAttnProject);
  // Queries: [T, H, N+R].
  if (c_.q_lora_rank > 0) {
    const int64_t QL = c_.q_lora_rank;
    kernels::MatMul(w.q_a, xn, D, T, q_a_.data(), QL, path);
    if (trace) trace->Emit(name + "q_a", q_a_.data(), T, QL, QL);
    for (int64_t t = 0; t < T; ++t) {
      float* row = q_a_.data() + t * QL;
      kernels::RmsNorm(row, w.q_a_norm.data(), static_cast<float>(c_.rms_norm_eps), QL, row);
    }
    if (trace) trace->Emit(name + "q_a_normed", q_a_.data(), T, QL, QL);
    kernels::MatMul(w.q_b, q_a_.data(), QL, T, q_.data(), H * NR, path);
  } else {
    kernels::MatMul(w.q, xn, D, T, q_.data(), H * NR, path);
  }
  if (trace) trace->Emit(name + "q", q_.data(), T, H * NR, H * NR);

  // Latent and shared rope key: [T, C+R] -> cache rows [c_kv normalized | k_pe rotated], built in
  // place in kv_a_ and then stored (rounded to the cache's type).
  kernels::MatMul(w.kv_a, xn, D, T, kv_a_.data(), C + R, path);
  if (trace) trace->Emit(name + "kv_a", kv_a_.data(), T, C + R, C + R);
  const int64_t half = R / 2;
  for (int64_t t = 0; t < T; ++t) {
    float* row = kv_a_.data() + t * (C + R);
    kernels::RmsNorm(row, w.kv_a_norm.data(), static_cast<float>(c_.rms_norm_eps), C, row);
    kernels::RopeInterleaved(row + C, cos_.data() + t * half, sin_.data() + t * half, half);
    cache.Store(layer, slots_[t], positions_[t], row);
    for (int64_t h = 0; h < H; ++h) {
      kernels::RopeInterleaved(q_.data() + (t * H + h) * NR + c_.qk_nope_head_dim,
                               cos_.data() + t * half, sin_.data() + t * half, half);
    }
  }
  if (trace) {
    trace->Emit(name + "kv_latent_normed", kv_a_.data(), T, C, C + R);
    trace->Emit(name + "k_pe_rotated", kv_a_.data() + C, T, R, C + R);
  }

  timer.emplace(profile_, Phase::kAttnCore);
  for (const Segment& seg : segments_) {
    if (UseAbsorbed(seg)) {
      for (int64_t t = seg.first; t < seg.first + seg.count; ++t)
        AttendAbsorbed(w, layer, cache, t);
    } else {
      AttendExpanded(w, layer, cache, seg);
    }
  }
  timer.emplace(profile_, Phase::kAttnOut);
  if (trace)
    trace->Emit(name + "attn_heads_out", heads_.data(), T, H * c_.v_head_dim, H * c_.v_head_dim);
  kernels::MatMul(w.o, heads_.data(), H * c_.v_head_dim, T, out, D, path);
}

// Token t against the cache rows 0..pos of its slot, all heads at once: the absorbed
// queries [H, C+R] are scored against blocks of cached rows; the rows of the cache are split
// across threads (flash-decoding), each keeping a running softmax per head, merged at the end.
void Mla::AttendAbsorbed(const MlaWeights& w, int64_t layer, const KvCache& cache, int64_t t) {
  const int64_t H = c_.num_attention_heads, C = c_.kv_lora_rank, R = c_.qk_rope_head_dim;
  const int64_t N = c_.qk_nope_head_dim, V = c_.v_head_dim, NR = N + R, NV = N + V, CR = C + R;
  const int64_t S = positions_[t] + 1, slot = slots_[t];
  const float scale = rope_.softmax_scale;
  float* q_lat = q_lat_.data();  // [H, C+R]

  // q_lat[h] = [W_uk[h]^T q_nope[h] | q_pe[h]]
  ParallelFor(H, 1, [&](int64_t h0, int64_t h1, int) {
    for (int64_t h = h0; h < h1; ++h) {
      const float* q = q_.data() + (t * H + h) * NR;
      float* ql = q_lat + h * CR;
      std::fill(ql, ql + C, 0.0f);
      kernels::MatVecTransposedRows(w.kv_b, h * NV, h * NV + N, q, ql);
      std::memcpy(ql + C, q + N, R * sizeof(float));
    }
  });

  // BF16 cache on AMX: the queries as tiles, once (see amx.h).
  const bool amx = kv_ == KvCacheType::kBF16 && q_tiles_.size() > 0 &&
                   kernels::AmxLatentAttentionSupported(H, CR, C);
  if (amx) kernels::AmxPrepareLatentQueries(q_lat, H, CR, q_tiles_.data());

  // Each thread: a contiguous range of cached rows, in blocks.
  const int64_t tiles = (S + kKeyBlock - 1) / kKeyBlock;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(NumThreads(), tiles));
  auto part = [&](int p) {
    float* base = thread_scratch_.data() + p * thread_stride_;
    float* scores = base;                      // [H, kKeyBlock]
    float* m = scores + Pad16(H * kKeyBlock);  // [H]
    float* l = m + Pad16(H);                   // [H]
    float* o = l + Pad16(H);                   // [Hp, C], rows OStride(C) apart
    return std::make_tuple(scores, m, l, o);
  };
  const int64_t Hp = Pad16(H), os = OStride(C);
  ParallelFor(S, kKeyBlock, [&](int64_t s0, int64_t s1, int p) {
    auto [scores, m, l, o] = part(p);
    float* convert = thread_scratch_.data() + p * thread_stride_ + convert_offset_;
    std::fill(m, m + Hp, -INFINITY);
    std::fill(l, l + Hp, 0.0f);
    std::fill(o, o + Hp * os, 0.0f);
    if (amx) {
      kernels::AmxLatentAttention(q_tiles_.data(), H, CR, C, cache.RowsBF16(layer, slot, s0),
                                  s1 - s0, scale, m, l, o, os, convert);
      return;
    }
    for (int64_t b0 = s0; b0 < s1; b0 += kKeyBlock) {
      const int64_t nb = std::min(kKeyBlock, s1 - b0);
      const float* rows = cache.RowsF32(layer, slot, b0, nb, convert);  // [nb, C+R]
      kernels::QKScores(q_lat, CR, H, rows, CR, nb, CR, scale, scores);
      for (int64_t h = 0; h < H; ++h) {
        const float correction = kernels::OnlineSoftmax(scores + h * nb, nb, m[h], l[h]);
        if (correction != 1.0f) kernels::Scale(correction, o + h * os, C);
      }
      kernels::PVAccumulate(scores, H, nb, rows, CR, C, o, os);  // values: the latents themselves
    }
  });

  // Merge the parts per head, then out[h] = W_uv[h] o[h].
  ParallelFor(H, 1, [&](int64_t h0, int64_t h1, int) {
    for (int64_t h = h0; h < h1; ++h) {
      auto [scores0, m0, l0, o0] = part(0);
      float m = m0[h];
      for (int p = 1; p < parts; ++p) m = std::max(m, std::get<1>(part(p))[h]);
      float l = 0;
      float* merged = o0 + h * os;
      for (int p = 0; p < parts; ++p) {
        auto [sp, mp, lp, op] = part(p);
        const float f = std::exp(mp[h] - m);
        l += lp[h] * f;
        if (p == 0) {
          kernels::Scale(f, merged, C);
        } else {
          kernels::Axpy(f, op + h * os, merged, C);
        }
      }
      kernels::Scale(1.0f / l, merged, C);
      kernels::MatMulRows(w.kv_b, h * NV + N, (h + 1) * NV, merged, C, 1,
                          heads_.data() + t * H * V + h * V, H * V, kernels::MatMulPath::kPerToken);
    }
  });
}

// The tokens of one segment (one slot, consecutive positions), one head per task: per block of
// cached tokens, the head's keys
// [k_nope | k_pe] and values are rebuilt from the latents with kv_b_proj, and every query that
// can see the block updates its running softmax and output (flash attention). Scratch is fixed:
// one key block, not the whole cache.
void Mla::AttendExpanded(const MlaWeights& w, int64_t layer, const KvCache& cache,
                         const Segment& seg) {
  const int64_t T = seg.count, H = c_.num_attention_heads, C = c_.kv_lora_rank;
  const int64_t R = c_.qk_rope_head_dim, N = c_.qk_nope_head_dim, V = c_.v_head_dim;
  const int64_t NR = N + R, NV = N + V, CR = C + R;
  const int64_t start = positions_[seg.first], slot = slots_[seg.first], S = start + T;
  const float* q_seg = q_.data() + seg.first * H * NR;  // the segment's queries
  float* heads_seg = heads_.data() + seg.first * H * V;
  const float scale = rope_.softmax_scale;
  ParallelFor(H, 1, [&](int64_t h0, int64_t h1, int p) {
    float* convert = thread_scratch_.data() + p * thread_stride_ + convert_offset_;
    float* keys = thread_scratch_.data() + p * thread_stride_;  // [kKeyBlock, N+R]
    float* values = keys + Pad16(kKeyBlock * NR);               // [kKeyBlock, V]
    float* scores = values + Pad16(kKeyBlock * V);              // [4, kKeyBlock]
    float* m = scores + Pad16(4 * kKeyBlock);                   // [T]
    float* l = m + Pad16(max_batch_);                           // [T]
    float* o = l + Pad16(max_batch_);                           // [T, V]
    for (int64_t h = h0; h < h1; ++h) {
      std::fill(m, m + T, -INFINITY);
      std::fill(l, l + T, 0.0f);
      std::fill(o, o + T * V, 0.0f);
      for (int64_t s0 = 0; s0 < S; s0 += kKeyBlock) {
        const int64_t nb = std::min(kKeyBlock, S - s0);
        const float* rows = cache.RowsF32(layer, slot, s0, nb, convert);          // [nb, C+R]
        kernels::MatMulRows(w.kv_b, h * NV, h * NV + N, rows, CR, nb, keys, NR);  // k_nope
        for (int64_t k = 0; k < nb; ++k)
          std::memcpy(keys + k * NR + N, rows + k * CR + C, R * sizeof(float));
        kernels::MatMulRows(w.kv_b, h * NV + N, (h + 1) * NV, rows, CR, nb, values, V);
        for (int64_t t0 = std::max<int64_t>(0, s0 - start); t0 < T; t0 += 4) {
          const int64_t nq = std::min<int64_t>(4, T - t0);
          kernels::QKScores(q_seg + (t0 * H + h) * NR, H * NR, nq, keys, NR, nb, NR, scale, scores);
          for (int64_t a = 0; a < nq; ++a) {
            const int64_t pos = start + t0 + a;  // causal: keys after pos are masked
            for (int64_t k = std::max<int64_t>(0, pos + 1 - s0); k < nb; ++k)
              scores[a * nb + k] = -INFINITY;
            const float correction =
                kernels::OnlineSoftmax(scores + a * nb, nb, m[t0 + a], l[t0 + a]);
            if (correction != 1.0f) kernels::Scale(correction, o + (t0 + a) * V, V);
          }
          kernels::PVAccumulate(scores, nq, nb, values, V, V, o + t0 * V, V);
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        float* dst = heads_seg + t * H * V + h * V;
        const float inv = 1.0f / l[t];
        for (int64_t j = 0; j < V; ++j) dst[j] = o[t * V + j] * inv;
      }
    }
  });
}

}  // namespace dsv3
