#include "model/decoder_layer.h"

#include "kernels/ops.h"

namespace dsv3 {

DecoderLayer::DecoderLayer(const Config& c, const RopeTable& rope, int64_t max_batch,
                           int64_t capacity, AttentionImpl attention, KvCacheType kv,
                           ProcessGroup* group)
    : c_(c),
      mla_(c, rope, max_batch, capacity, attention, kv),
      mlp_(1, max_batch, c.intermediate_size, c.hidden_size),
      moe_(c, c.n_routed_experts > 0 ? max_batch : 0, group),
      xn_(max_batch * c.hidden_size),
      y_(max_batch * c.hidden_size) {}

void DecoderLayer::set_profile(ForwardProfile* profile) {
  profile_ = profile;
  mla_.set_profile(profile);
  moe_.set_profile(profile);
}

size_t DecoderLayer::scratch_bytes() const {
  return mla_.scratch_bytes() + mlp_.scratch_bytes() + moe_.scratch_bytes() +
         sizeof(float) * (xn_.size() + y_.size());
}

void DecoderLayer::Forward(const ForwardStep& step, const LayerWeights& w, int64_t layer,
                           int64_t cache_layer, KvCache& cache, float* x, const std::string& name) {
  const int64_t T = step.T, D = c_.hidden_size;
  if (T == 0) {  // nothing of this rank's own runs; it still serves the MoE exchange
    if (w.is_moe) moe_.Forward(step, w.moe, layer, nullptr, nullptr);
    return;
  }
  ForwardTrace* trace = step.trace;
  const float eps = static_cast<float>(c_.rms_norm_eps);
  float* xn = xn_.data();  // [T, D]
  float* y = y_.data();    // [T, D]
  auto emit = [&](const char* what, const float* data) {
    if (trace) trace->Emit(name + "." + what, data, T, D, D);
  };
  for (int64_t t = 0; t < T; ++t)
    kernels::RmsNorm(x + t * D, w.attn_norm.data(), eps, D, xn + t * D);
  mla_.Forward(step, w.attn, cache_layer, xn, cache, y, name);  // y = MLA(norm(x))
  emit("attn_out", y);
  kernels::Add(y, x, T * D);  // x += y
  for (int64_t t = 0; t < T; ++t)
    kernels::RmsNorm(x + t * D, w.ffn_norm.data(), eps, D, xn + t * D);
  emit("ffn_in", xn);
  if (w.is_moe) {
    moe_.Forward(step, w.moe, layer, xn, y);  // y = MoE(norm(x))
  } else {
    PhaseTimer timer(profile_, Phase::kDenseMlp);
    mlp_.Forward(w.mlp, xn, T, y, step.matmul);  // y = MLP(norm(x))
  }
  emit("ffn_out", y);
  kernels::Add(y, x, T * D);  // x += y
  emit("block_out", x);
}

}  // namespace dsv3
