#include "model/tensor_specs.h"

namespace dsv3 {
namespace {

void AddMlp(std::vector<TensorSpec>& out, const std::string& p, int64_t D, int64_t I) {
  out.push_back({p + "gate_proj.weight", {I, D}, TensorRole::kLinear, true});
  out.push_back({p + "up_proj.weight", {I, D}, TensorRole::kLinear, true});
  out.push_back({p + "down_proj.weight", {D, I}, TensorRole::kLinear, true});
}

// One decoder layer (MLA + dense MLP or MoE) at index `layer`, with MoE-ness given explicitly (MTP
// layers are always MoE in DeepSeek-V3 but follow the same rule as main layers here).
void AddDecoderLayer(std::vector<TensorSpec>& out, const Config& c, int64_t layer) {
  const std::string p = LayerPrefix(layer);
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  out.push_back({p + "input_layernorm.weight", {D}, TensorRole::kNorm});
  const std::string a = p + "self_attn.";
  if (c.q_lora_rank > 0) {
    out.push_back({a + "q_a_proj.weight", {c.q_lora_rank, D}, TensorRole::kLinear, true});
    out.push_back({a + "q_a_layernorm.weight", {c.q_lora_rank}, TensorRole::kNorm});
    out.push_back(
        {a + "q_b_proj.weight", {H * c.qk_head_dim(), c.q_lora_rank}, TensorRole::kLinear, true});
  } else {
    out.push_back({a + "q_proj.weight", {H * c.qk_head_dim(), D}, TensorRole::kLinear, true});
  }
  out.push_back({a + "kv_a_proj_with_mqa.weight", {c.kv_width(), D}, TensorRole::kLinear, true});
  out.push_back({a + "kv_a_layernorm.weight", {c.kv_lora_rank}, TensorRole::kNorm});
  out.push_back({a + "kv_b_proj.weight",
                 {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
                 TensorRole::kLinear,
                 true});
  out.push_back({a + "o_proj.weight", {D, H * c.v_head_dim}, TensorRole::kLinear, true});
  out.push_back({p + "post_attention_layernorm.weight", {D}, TensorRole::kNorm});
  if (!c.IsMoeLayer(layer)) {
    AddMlp(out, p + "mlp.", D, c.intermediate_size);
    return;
  }
  const int64_t E = c.n_routed_experts;
  out.push_back({p + "mlp.gate.weight", {E, D}, TensorRole::kLinear});
  if (c.topk_method == TopkMethod::kNoauxTc) {
    out.push_back({p + "mlp.gate.e_score_correction_bias", {E}, TensorRole::kBias});
  }
  for (int64_t e = 0; e < E; ++e) {
    AddMlp(out, p + "mlp.experts." + std::to_string(e) + ".", D, c.moe_intermediate_size);
  }
  if (c.n_shared_experts > 0) AddMlp(out, p + "mlp.shared_experts.", D, c.shared_intermediate());
}

}  // namespace

std::string LayerPrefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

std::vector<TensorSpec> MainTensorSpecs(const Config& c) {
  std::vector<TensorSpec> out;
  out.push_back(
      {"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, TensorRole::kEmbedding});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) AddDecoderLayer(out, c, l);
  out.push_back({"model.norm.weight", {c.hidden_size}, TensorRole::kNorm});
  if (!c.tie_word_embeddings) {
    out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, TensorRole::kLinear});
  }
  return out;
}

std::vector<TensorSpec> MtpTensorSpecs(const Config& c, int64_t k) {
  const int64_t layer = c.num_hidden_layers + k;
  const std::string p = LayerPrefix(layer);
  const int64_t D = c.hidden_size;
  std::vector<TensorSpec> out;
  out.push_back({p + "embed_tokens.weight", {c.vocab_size, D}, TensorRole::kEmbedding});
  out.push_back({p + "enorm.weight", {D}, TensorRole::kNorm});
  out.push_back({p + "hnorm.weight", {D}, TensorRole::kNorm});
  out.push_back({p + "eh_proj.weight", {D, 2 * D}, TensorRole::kLinear});
  AddDecoderLayer(out, c, layer);
  out.push_back({p + "shared_head.norm.weight", {D}, TensorRole::kNorm});
  out.push_back({p + "shared_head.head.weight", {c.vocab_size, D}, TensorRole::kLinear});
  return out;
}

}  // namespace dsv3
