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

#include "core/aligned.h"
#include "core/parallel.h"
#include "kernels/attention.h"
#include "kernels/latent_attention.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {
constexpr int64_t kKeyBlock = 256;  // cached tokens per block of the expanded form

kernels::LatentAttentionShape LatentShape(const Config& c) {
  return {.heads = c.num_attention_heads, .width = c.kv_width(), .latent = c.kv_lora_rank};
}
DType CacheDType(KvCacheType kv) { return kv == KvCacheType::kBF16 ? DType::kBF16 : DType::kF32; }
}  // namespace

Mla::Mla(const Config& c, const RopeTable& rope, int64_t max_batch, int64_t capacity,
         AttentionImpl impl, KvCacheType kv)
    : c_(c), rope_(rope), impl_(impl), kv_(kv), max_batch_(max_batch), capacity_(capacity) {
  const int64_t B = max_batch, H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t NR = c.qk_head_dim(), V = c.v_head_dim;
  q_a_.Resize(B * std::max<int64_t>(c.q_lora_rank, 1));
  q_.Resize(B * H * NR);
  kv_a_.Resize(B * c.kv_width());
  heads_.Resize(B * H * V);
  q_lat_.Resize(H * c.kv_width());
  o_lat_.Resize(H * C);
  // Expanded, per thread: keys [kKeyBlock, N+R], values [kKeyBlock, V], scores [4, kKeyBlock],
  // m and l [B], outputs [B, V]; for a BF16 cache a key block converted to float32.
  convert_offset_ = PadFloats(kKeyBlock * NR) + PadFloats(kKeyBlock * V) +
                    PadFloats(4 * kKeyBlock) + 2 * PadFloats(B) + PadFloats(B * V);
  thread_stride_ = convert_offset_;
  if (kv_ == KvCacheType::kBF16) thread_stride_ += PadFloats(kKeyBlock * c.kv_width());
  EnsureThreadScratch();
}

// Sized for the current thread count (grown if it rose since construction: not in steady state).
void Mla::EnsureThreadScratch() {
  if (NumThreads() <= threads_) return;
  threads_ = NumThreads();
  const size_t latent =
      kernels::LatentAttentionScratchBytes(LatentShape(c_), CacheDType(kv_), threads_);
  scratch_.Resize(std::max(static_cast<size_t>(thread_stride_ * threads_), (latent + 3) / 4));
}

size_t Mla::scratch_bytes() const {
  return sizeof(float) * (q_a_.size() + q_.size() + kv_a_.size() + heads_.size() + q_lat_.size() +
                          o_lat_.size() + scratch_.size());
}

// Multiply-adds of each form for a segment (see the file comment), to pick the cheaper.
bool Mla::UseAbsorbed(const ForwardStep& step, const StepSegment& seg) const {
  if (impl_ != AttentionImpl::kAuto) return impl_ == AttentionImpl::kAbsorbed;
  const double N = static_cast<double>(c_.qk_nope_head_dim), V = static_cast<double>(c_.v_head_dim);
  const double C = static_cast<double>(c_.kv_lora_rank),
               R = static_cast<double>(c_.qk_rope_head_dim);
  const double start = static_cast<double>(step.positions[seg.first]);
  const double T = static_cast<double>(seg.count), S = start + T;
  const double attended = T * (start + (T + 1) / 2);  // causal (t, s) pairs
  const double absorbed = T * (N + V) * C + attended * (2 * C + R);
  const double expanded = S * (N + V) * C + attended * (N + R + V);
  return absorbed <= expanded;
}

void Mla::Forward(const ForwardStep& step, const MlaWeights& w, int64_t layer, const float* xn,
                  KvCache& cache, float* out, const std::string& trace_name) {
  const int64_t T = step.T, D = c_.hidden_size, H = c_.num_attention_heads;
  const int64_t C = c_.kv_lora_rank, R = c_.qk_rope_head_dim, NR = c_.qk_head_dim();
  ForwardTrace* trace = step.trace;
  const kernels::MatMulOptions& mm = step.matmul;
  const std::string name = trace ? trace_name + ".mla." : "";
  EnsureThreadScratch();
  std::optional<PhaseTimer> timer(std::in_place, profile_, Phase::kAttnProject);
  // Queries: [T, H, N+R].
  if (c_.q_lora_rank > 0) {
    const int64_t QL = c_.q_lora_rank;
    kernels::MatMul(w.q_a, xn, D, T, q_a_.data(), QL, mm);
    if (trace) trace->Emit(name + "q_a", q_a_.data(), T, QL, QL);
    for (int64_t t = 0; t < T; ++t) {
      float* row = q_a_.data() + t * QL;
      kernels::RmsNorm(row, w.q_a_norm.data(), static_cast<float>(c_.rms_norm_eps), QL, row);
    }
    if (trace) trace->Emit(name + "q_a_normed", q_a_.data(), T, QL, QL);
    kernels::MatMul(w.q_b, q_a_.data(), QL, T, q_.data(), H * NR, mm);
  } else {
    kernels::MatMul(w.q, xn, D, T, q_.data(), H * NR, mm);
  }
  if (trace) trace->Emit(name + "q", q_.data(), T, H * NR, H * NR);

  // Latent and shared rope key: [T, C+R] -> cache rows [c_kv normalized | k_pe rotated], built in
  // place in kv_a_ and then stored (rounded to the cache's type).
  kernels::MatMul(w.kv_a, xn, D, T, kv_a_.data(), C + R, mm);
  if (trace) trace->Emit(name + "kv_a", kv_a_.data(), T, C + R, C + R);
  const int64_t half = R / 2;
  for (int64_t t = 0; t < T; ++t) {
    float* row = kv_a_.data() + t * (C + R);
    const float *cos = step.cos + t * half, *sin = step.sin + t * half;
    kernels::RmsNorm(row, w.kv_a_norm.data(), static_cast<float>(c_.rms_norm_eps), C, row);
    kernels::RopeInterleaved(row + C, cos, sin, half);
    cache.Store(layer, step.slots[t], step.positions[t], row);
    for (int64_t h = 0; h < H; ++h) {
      kernels::RopeInterleaved(q_.data() + (t * H + h) * NR + c_.qk_nope_head_dim, cos, sin, half);
    }
  }
  if (trace) {
    trace->Emit(name + "kv_latent_normed", kv_a_.data(), T, C, C + R);
    trace->Emit(name + "k_pe_rotated", kv_a_.data() + C, T, R, C + R);
  }

  timer.emplace(profile_, Phase::kAttnCore);
  for (const StepSegment& seg : step.segments) {
    if (UseAbsorbed(step, seg)) {
      for (int64_t t = seg.first; t < seg.first + seg.count; ++t)
        AttendAbsorbed(step, w, layer, cache, t);
    } else {
      AttendExpanded(step, w, layer, cache, seg);
    }
  }
  timer.emplace(profile_, Phase::kAttnOut);
  if (trace)
    trace->Emit(name + "attn_heads_out", heads_.data(), T, H * c_.v_head_dim, H * c_.v_head_dim);
  kernels::MatMul(w.o, heads_.data(), H * c_.v_head_dim, T, out, D, mm);
}

// Token t against the cache rows 0..pos of its slot, all heads at once: the absorbed queries
// [H, C+R] attend over the cached latents (kernels::LatentAttention), then out[h] = W_uv[h] o[h].
void Mla::AttendAbsorbed(const ForwardStep& step, const MlaWeights& w, int64_t layer,
                         const KvCache& cache, int64_t t) {
  const int64_t H = c_.num_attention_heads, C = c_.kv_lora_rank, R = c_.qk_rope_head_dim;
  const int64_t N = c_.qk_nope_head_dim, V = c_.v_head_dim, NR = N + R, NV = N + V, CR = C + R;
  const int64_t S = step.positions[t] + 1, slot = step.slots[t];
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

  kernels::LatentAttention(LatentShape(c_), q_lat, cache.Rows(layer, slot, S), rope_.softmax_scale,
                           step.matmul.precision, o_lat_.data(), C, scratch_.data());

  ParallelFor(H, 1, [&](int64_t h0, int64_t h1, int) {
    for (int64_t h = h0; h < h1; ++h) {
      kernels::MatMulRows(w.kv_b, h * NV + N, (h + 1) * NV, o_lat_.data() + h * C, C, 1,
                          heads_.data() + t * H * V + h * V, H * V,
                          {.path = kernels::MatMulPath::kPerToken});
    }
  });
}

// The tokens of one segment (one slot, consecutive positions), one head per task: per block of
// cached tokens, the head's keys
// [k_nope | k_pe] and values are rebuilt from the latents with kv_b_proj, and every query that
// can see the block updates its running softmax and output (flash attention). Scratch is fixed:
// one key block, not the whole cache.
void Mla::AttendExpanded(const ForwardStep& step, const MlaWeights& w, int64_t layer,
                         const KvCache& cache, const StepSegment& seg) {
  const int64_t T = seg.count, H = c_.num_attention_heads, C = c_.kv_lora_rank;
  const int64_t R = c_.qk_rope_head_dim, N = c_.qk_nope_head_dim, V = c_.v_head_dim;
  const int64_t NR = N + R, NV = N + V, CR = C + R;
  const int64_t start = step.positions[seg.first], slot = step.slots[seg.first], S = start + T;
  const float* q_seg = q_.data() + seg.first * H * NR;  // the segment's queries
  float* heads_seg = heads_.data() + seg.first * H * V;
  const float scale = rope_.softmax_scale;
  // Blocks of cached tokens: the blocked product whatever the step's path.
  const kernels::MatMulOptions mm{.precision = step.matmul.precision};
  ParallelFor(H, 1, [&](int64_t h0, int64_t h1, int p) {
    float* convert = scratch_.data() + p * thread_stride_ + convert_offset_;
    float* keys = scratch_.data() + p * thread_stride_;  // [kKeyBlock, N+R]
    float* values = keys + PadFloats(kKeyBlock * NR);    // [kKeyBlock, V]
    float* scores = values + PadFloats(kKeyBlock * V);   // [4, kKeyBlock]
    float* m = scores + PadFloats(4 * kKeyBlock);        // [T]
    float* l = m + PadFloats(max_batch_);                // [T]
    float* o = l + PadFloats(max_batch_);                // [T, V]
    for (int64_t h = h0; h < h1; ++h) {
      std::fill(m, m + T, -INFINITY);
      std::fill(l, l + T, 0.0f);
      std::fill(o, o + T * V, 0.0f);
      for (int64_t s0 = 0; s0 < S; s0 += kKeyBlock) {
        const int64_t nb = std::min(kKeyBlock, S - s0);
        const float* rows = cache.RowsF32(layer, slot, s0, nb, convert);              // [nb, C+R]
        kernels::MatMulRows(w.kv_b, h * NV, h * NV + N, rows, CR, nb, keys, NR, mm);  // k_nope
        for (int64_t k = 0; k < nb; ++k)
          std::memcpy(keys + k * NR + N, rows + k * CR + C, R * sizeof(float));
        kernels::MatMulRows(w.kv_b, h * NV + N, (h + 1) * NV, rows, CR, nb, values, V, mm);
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
