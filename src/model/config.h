// The model configuration: every config.json field that changes the computation of the DeepSeek
// V2/V3 family (model_type deepseek_v2 / deepseek_v3), validated. Letters used in shape comments
// across the model code: T tokens in the step, S tokens in the cache, D hidden_size,
// H num_attention_heads, C kv_lora_rank, R qk_rope_head_dim, N qk_nope_head_dim, V v_head_dim,
// E n_routed_experts, K num_experts_per_tok, I an MLP's intermediate width.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/json.h"

namespace dsv3 {

// Limit on the size of config.json (untrusted input; published ones are a few KB).
inline constexpr size_t kMaxConfigJsonBytes = 16u << 20;

enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };
enum class ScoringFunc { kSoftmax, kSigmoid };

struct YarnScaling {
  double factor = 1;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32, beta_slow = 1;
  double mscale = 1, mscale_all_dim = 0;
};

struct Config {
  std::string model_type;  // deepseek_v2 | deepseek_v3
  int64_t vocab_size = 0, hidden_size = 0, num_hidden_layers = 0, num_attention_heads = 0;
  int64_t intermediate_size = 0, moe_intermediate_size = 0;
  // MLA
  int64_t q_lora_rank = 0;  // 0: plain q_proj (config null)
  int64_t kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  // MoE; n_routed_experts == 0 means every layer is dense
  int64_t n_routed_experts = 0, n_shared_experts = 0, num_experts_per_tok = 0;
  int64_t n_group = 1, topk_group = 1, first_k_dense_replace = 0, moe_layer_freq = 1;
  TopkMethod topk_method = TopkMethod::kGreedy;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1;
  // Norms and positions
  double rms_norm_eps = 1e-6, rope_theta = 10000;
  std::optional<YarnScaling> rope_scaling;  // nullopt: plain RoPE
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int64_t num_nextn_predict_layers = 0;
  // FP8 block quantization (quantization_config); 0 when the checkpoint is not quantized
  int64_t quant_block_rows = 0, quant_block_cols = 0;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  Json raw;  // the parsed config.json, as read

  // Parses and validates; `source` names the file in errors.
  static Config FromJson(const Json& json, const std::string& source);
  // Reads DIR/config.json.
  static Config Load(const std::string& dir);

  bool IsMoeLayer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int64_t kv_width() const { return kv_lora_rank + qk_rope_head_dim; }  // latent cache row, C + R
  int64_t shared_intermediate() const { return moe_intermediate_size * n_shared_experts; }
};

const char* TopkMethodName(TopkMethod m);
const char* ScoringFuncName(ScoringFunc f);

}  // namespace dsv3
