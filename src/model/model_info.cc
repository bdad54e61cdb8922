#include "model/model_info.h"

#include "model/tensor_specs.h"

namespace dsv3 {
namespace {
int64_t Numel(const TensorSpec& s) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  return n;
}
}  // namespace

ParamCounts CountParams(const Config& c) {
  ParamCounts p;
  for (const TensorSpec& s : MainTensorSpecs(c)) p.total += Numel(s);
  p.embedding = c.vocab_size * c.hidden_size;
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.IsMoeLayer(l) ? 1 : 0;
  const int64_t per_expert = 3 * c.hidden_size * c.moe_intermediate_size;
  const int64_t inactive = moe_layers * (c.n_routed_experts - c.num_experts_per_tok) * per_expert;
  p.activated_with_embedding = p.total - inactive;
  // A tied embedding is also the lm_head, which every token multiplies with.
  p.activated = p.activated_with_embedding - (c.tie_word_embeddings ? 0 : p.embedding);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    for (const TensorSpec& s : MtpTensorSpecs(c, k)) p.mtp += Numel(s);
  }
  return p;
}

namespace {
uint64_t Bytes(const MlpWeights& m) { return m.gate.bytes() + m.up.bytes() + m.down.bytes(); }
uint64_t Bytes(const std::vector<float>& v) { return v.size() * sizeof(float); }
}  // namespace

PhaseBytes WeightBytesPerPhase(const Config& c, const Weights& w) {
  PhaseBytes b{};
  auto at = [&](Phase p) -> uint64_t& { return b[static_cast<size_t>(p)]; };
  at(Phase::kEmbed) = w.embed.bytes() / static_cast<uint64_t>(c.vocab_size);
  at(Phase::kLmHead) = w.lm_head.bytes() + Bytes(w.final_norm);
  for (const LayerWeights& l : w.layers) {
    const MlaWeights& a = l.attn;
    at(Phase::kAttnProject) += Bytes(l.attn_norm) + a.q_a.bytes() + Bytes(a.q_a_norm) +
                               a.q_b.bytes() + a.q.bytes() + a.kv_a.bytes() + Bytes(a.kv_a_norm);
    at(Phase::kAttnCore) += a.kv_b.bytes();
    at(Phase::kAttnOut) += a.o.bytes();
    if (!l.is_moe) {
      at(Phase::kDenseMlp) += Bytes(l.ffn_norm) + Bytes(l.mlp);
    } else {
      at(Phase::kRouter) += Bytes(l.ffn_norm) + l.moe.router.bytes() + Bytes(l.moe.correction_bias);
      at(Phase::kExperts) += Bytes(l.moe.shared) + c.num_experts_per_tok * Bytes(l.moe.experts[0]);
    }
  }
  return b;
}

uint64_t WeightBytesPerToken(const Config& c, const Weights& w) {
  uint64_t total = 0;
  for (uint64_t bytes : WeightBytesPerPhase(c, w)) total += bytes;
  return total;
}

}  // namespace dsv3
