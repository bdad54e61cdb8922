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
#include <cstring>
#include <optional>

#include "core/parallel.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {
int64_t Pad16(int64_t n) { return (n + 15) / 16 * 16; }
}  // namespace

Mla::Mla(const Config& c, const RopeTable& rope, int64_t max_batch, int64_t capacity,
         AttentionImpl impl)
    : c_(c), rope_(rope), impl_(impl), max_batch_(max_batch), capacity_(capacity) {
  const int64_t B = max_batch, H = c.num_attention_heads;
  cos_.Resize(B * c.qk_rope_head_dim / 2);
  sin_.Resize(B * c.qk_rope_head_dim / 2);
  q_a_.Resize(B * std::max<int64_t>(c.q_lora_rank, 1));
  q_.Resize(B * H * c.qk_head_dim());
  kv_a_.Resize(B * c.kv_width());
  heads_.Resize(B * H * c.v_head_dim);
  thread_stride_ = Pad16(c.kv_width()) + Pad16(c.kv_lora_rank) + Pad16(capacity);
  if (impl == AttentionImpl::kExpanded) {
    thread_stride_ += Pad16(capacity * c.qk_nope_head_dim) + Pad16(capacity * c.v_head_dim);
  }
  threads_ = NumThreads();
  thread_scratch_.Resize(static_cast<size_t>(thread_stride_ * threads_));
}

size_t Mla::scratch_bytes() const {
  return sizeof(float) * (cos_.size() + sin_.size() + q_a_.size() + q_.size() + kv_a_.size() +
                          heads_.size() + thread_scratch_.size());
}

void Mla::SetPositions(int64_t start, int64_t T) {
  start_ = start;
  T_ = T;
  const int64_t half = c_.qk_rope_head_dim / 2;
  for (int64_t t = 0; t < T; ++t)
    rope_.Angles(start + t, cos_.data() + t * half, sin_.data() + t * half);
}

void Mla::Forward(const MlaWeights& w, int64_t layer, const float* xn, KvCache& cache, float* out,
                  ForwardTrace* trace) {
  const int64_t T = T_, D = c_.hidden_size, H = c_.num_attention_heads;
  const int64_t C = c_.kv_lora_rank, R = c_.qk_rope_head_dim, NR = c_.qk_head_dim();
  const std::string name = trace ? "layer" + std::to_string(layer) + ".mla." : "";
  if (NumThreads() > threads_) {  // the thread count grew since construction (not in steady state)
    threads_ = NumThreads();
    thread_scratch_.Resize(static_cast<size_t>(thread_stride_ * threads_));
  }

  std::optional<PhaseTimer> timer(std::in_place, profile_, Phase::kAttnProject);
  // Queries: [T, H, N+R].
  if (c_.q_lora_rank > 0) {
    const int64_t QL = c_.q_lora_rank;
    kernels::MatMul(w.q_a, xn, D, T, q_a_.data(), QL);
    if (trace) trace->Emit(name + "q_a", q_a_.data(), T, QL, QL);
    for (int64_t t = 0; t < T; ++t) {
      float* row = q_a_.data() + t * QL;
      kernels::RmsNorm(row, w.q_a_norm.data(), static_cast<float>(c_.rms_norm_eps), QL, row);
    }
    if (trace) trace->Emit(name + "q_a_normed", q_a_.data(), T, QL, QL);
    kernels::MatMul(w.q_b, q_a_.data(), QL, T, q_.data(), H * NR);
  } else {
    kernels::MatMul(w.q, xn, D, T, q_.data(), H * NR);
  }
  if (trace) trace->Emit(name + "q", q_.data(), T, H * NR, H * NR);

  // Latent and shared rope key: [T, C+R] -> cache rows [c_kv normalized | k_pe rotated].
  kernels::MatMul(w.kv_a, xn, D, T, kv_a_.data(), C + R);
  if (trace) trace->Emit(name + "kv_a", kv_a_.data(), T, C + R, C + R);
  const int64_t half = R / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* src = kv_a_.data() + t * (C + R);
    float* row = cache.Row(layer, start_ + t);
    kernels::RmsNorm(src, w.kv_a_norm.data(), static_cast<float>(c_.rms_norm_eps), C, row);
    std::memcpy(row + C, src + C, R * sizeof(float));
    kernels::RopeInterleaved(row + C, cos_.data() + t * half, sin_.data() + t * half, half);
    for (int64_t h = 0; h < H; ++h) {
      kernels::RopeInterleaved(q_.data() + (t * H + h) * NR + c_.qk_nope_head_dim,
                               cos_.data() + t * half, sin_.data() + t * half, half);
    }
  }
  if (trace) {
    trace->Emit(name + "kv_latent_normed", cache.Row(layer, start_), T, C, C + R);
    trace->Emit(name + "k_pe_rotated", cache.Row(layer, start_) + C, T, R, C + R);
  }

  timer.emplace(profile_, Phase::kAttnCore);
  if (impl_ == AttentionImpl::kAbsorbed) {
    AttendAbsorbed(w, layer, cache);
  } else {
    AttendExpanded(w, layer, cache);
  }
  timer.emplace(profile_, Phase::kAttnOut);
  if (trace)
    trace->Emit(name + "attn_heads_out", heads_.data(), T, H * c_.v_head_dim, H * c_.v_head_dim);
  kernels::MatMul(w.o, heads_.data(), H * c_.v_head_dim, T, out, D);
}

void Mla::AttendAbsorbed(const MlaWeights& w, int64_t layer, const KvCache& cache) {
  const int64_t T = T_, H = c_.num_attention_heads, C = c_.kv_lora_rank, R = c_.qk_rope_head_dim;
  const int64_t N = c_.qk_nope_head_dim, V = c_.v_head_dim, NR = N + R, NV = N + V;
  const float scale = rope_.softmax_scale;
  // Tasks are (head, token) pairs, head-major, so a thread reuses one head's W_uk / W_uv slices.
  ParallelFor(H * T, 1, [&](int64_t begin, int64_t end, int thread) {
    float* q_lat = thread_scratch_.data() + thread * thread_stride_;  // [C+R]
    float* o_lat = q_lat + Pad16(C + R);                              // [C]
    float* scores = o_lat + Pad16(C);                                 // [S]
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / T, t = task % T, pos = start_ + t;
      const float* q = q_.data() + (t * H + h) * NR;  // [q_nope N | q_pe R]
      std::fill(q_lat, q_lat + C, 0.0f);
      kernels::MatVecTransposedRows(w.kv_b, h * NV, h * NV + N, q, q_lat);  // W_uk[h]^T q_nope
      std::memcpy(q_lat + C, q + N, R * sizeof(float));
      for (int64_t s = 0; s <= pos; ++s) {
        scores[s] = kernels::Dot(q_lat, cache.Row(layer, s), C + R) * scale;
      }
      kernels::Softmax(scores, pos + 1);
      std::fill(o_lat, o_lat + C, 0.0f);
      for (int64_t s = 0; s <= pos; ++s) kernels::Axpy(scores[s], cache.Row(layer, s), o_lat, C);
      // W_uv[h] o_lat -> [V]
      kernels::MatMulRows(w.kv_b, h * NV + N, (h + 1) * NV, o_lat, C, 1,
                          heads_.data() + t * H * V + h * V, H * V);
    }
  });
}

void Mla::AttendExpanded(const MlaWeights& w, int64_t layer, const KvCache& cache) {
  const int64_t T = T_, H = c_.num_attention_heads, C = c_.kv_lora_rank, R = c_.qk_rope_head_dim;
  const int64_t N = c_.qk_nope_head_dim, V = c_.v_head_dim, NR = N + R, NV = N + V;
  const int64_t S = start_ + T;
  const float scale = rope_.softmax_scale;
  ParallelFor(H, 1, [&](int64_t begin, int64_t end, int thread) {
    float* scores = thread_scratch_.data() + thread * thread_stride_ + Pad16(C + R) + Pad16(C);
    float* k_nope = scores + Pad16(capacity_);      // [S, N]
    float* values = k_nope + Pad16(capacity_ * N);  // [S, V]
    for (int64_t h = begin; h < end; ++h) {
      // Per-head keys and values of every cached token: kv_b_proj applied to the latents.
      kernels::MatMulRows(w.kv_b, h * NV, h * NV + N, cache.Row(layer, 0), C + R, S, k_nope, N);
      kernels::MatMulRows(w.kv_b, h * NV + N, (h + 1) * NV, cache.Row(layer, 0), C + R, S, values,
                          V);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t pos = start_ + t;
        const float* q = q_.data() + (t * H + h) * NR;
        for (int64_t s = 0; s <= pos; ++s) {
          scores[s] = (kernels::Dot(q, k_nope + s * N, N) +
                       kernels::Dot(q + N, cache.Row(layer, s) + C, R)) *
                      scale;
        }
        kernels::Softmax(scores, pos + 1);
        float* o = heads_.data() + t * H * V + h * V;
        std::fill(o, o + V, 0.0f);
        for (int64_t s = 0; s <= pos; ++s) kernels::Axpy(scores[s], values + s * V, o, V);
      }
    }
  });
}

}  // namespace dsv3
