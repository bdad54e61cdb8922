#include "model/config.h"

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/json_fields.h"

namespace dsv3 {
namespace {

constexpr int64_t kMaxDim = 1 << 20;  // far above any published model, small enough to be safe

}  // namespace

const char* TopkMethodName(TopkMethod m) {
  switch (m) {
    case TopkMethod::kGreedy:
      return "greedy";
    case TopkMethod::kGroupLimitedGreedy:
      return "group_limited_greedy";
    case TopkMethod::kNoauxTc:
      return "noaux_tc";
  }
  return "?";
}

const char* ScoringFuncName(ScoringFunc f) {
  return f == ScoringFunc::kSoftmax ? "softmax" : "sigmoid";
}

Config Config::FromJson(const Json& json, const std::string& source) {
  if (!json.is_object()) Fail("{}: expected a JSON object", source);
  const FieldReader f(json, source);
  Config c;
  c.raw = json;

  const auto model_type = f.String("model_type");
  if (!model_type) Fail("{}: required field 'model_type' is missing", source);
  if (*model_type != "deepseek_v2" && *model_type != "deepseek_v3") {
    Fail("{}: field 'model_type' is '{}'; supported: deepseek_v2, deepseek_v3", source,
         *model_type);
  }
  c.model_type = *model_type;
  const bool v3 = c.model_type == "deepseek_v3";

  c.vocab_size = f.Int("vocab_size", std::nullopt, 1, 1 << 24);
  c.hidden_size = f.Int("hidden_size", std::nullopt, 1, kMaxDim);
  c.num_hidden_layers = f.Int("num_hidden_layers", std::nullopt, 1, 4096);
  c.num_attention_heads = f.Int("num_attention_heads", std::nullopt, 1, 4096);
  c.intermediate_size = f.Int("intermediate_size", std::nullopt, 1, kMaxDim);
  c.q_lora_rank = f.Int("q_lora_rank", 0, 0, kMaxDim);
  c.kv_lora_rank = f.Int("kv_lora_rank", std::nullopt, 1, kMaxDim);
  c.qk_nope_head_dim = f.Int("qk_nope_head_dim", std::nullopt, 0, kMaxDim);
  c.qk_rope_head_dim = f.Int("qk_rope_head_dim", std::nullopt, 2, kMaxDim);
  c.v_head_dim = f.Int("v_head_dim", std::nullopt, 1, kMaxDim);
  if (c.qk_rope_head_dim % 2 != 0) f.Bad("qk_rope_head_dim", "even (RoPE rotates pairs)");
  c.max_position_embeddings = f.Int("max_position_embeddings", std::nullopt, 1, int64_t{1} << 31);

  c.n_routed_experts = f.Int("n_routed_experts", 0, 0, 1 << 16);
  if (c.n_routed_experts > 0) {
    c.moe_intermediate_size = f.Int("moe_intermediate_size", std::nullopt, 1, kMaxDim);
    c.n_shared_experts = f.Int("n_shared_experts", 0, 0, 1024);
    c.num_experts_per_tok = f.Int("num_experts_per_tok", std::nullopt, 1, c.n_routed_experts);
    c.n_group = f.Int("n_group", 1, 1, c.n_routed_experts);
    c.topk_group = f.Int("topk_group", 1, 1, c.n_group);
    c.first_k_dense_replace = f.Int("first_k_dense_replace", 0, 0, kMaxDim);
    c.moe_layer_freq = f.Int("moe_layer_freq", 1, 1, kMaxDim);
    const std::string topk = f.String("topk_method").value_or(v3 ? "noaux_tc" : "greedy");
    if (topk == "greedy")
      c.topk_method = TopkMethod::kGreedy;
    else if (topk == "group_limited_greedy")
      c.topk_method = TopkMethod::kGroupLimitedGreedy;
    else if (topk == "noaux_tc")
      c.topk_method = TopkMethod::kNoauxTc;
    else
      Fail("{}: field 'topk_method' is '{}'; supported: greedy, group_limited_greedy, noaux_tc",
           source, topk);
    const std::string scoring = f.String("scoring_func").value_or(v3 ? "sigmoid" : "softmax");
    if (scoring == "softmax")
      c.scoring_func = ScoringFunc::kSoftmax;
    else if (scoring == "sigmoid")
      c.scoring_func = ScoringFunc::kSigmoid;
    else
      Fail("{}: field 'scoring_func' is '{}'; supported: softmax, sigmoid", source, scoring);
    c.norm_topk_prob = f.Bool("norm_topk_prob", v3);
    c.routed_scaling_factor = f.Number("routed_scaling_factor", v3 ? 2.5 : 1.0, 0, 1e6);
    if (c.n_routed_experts % c.n_group != 0) {
      Fail("{}: n_routed_experts ({}) must be a multiple of n_group ({})", source,
           c.n_routed_experts, c.n_group);
    }
    const int64_t per_group = c.n_routed_experts / c.n_group;
    if (c.topk_method != TopkMethod::kGreedy && c.num_experts_per_tok > c.topk_group * per_group) {
      Fail("{}: num_experts_per_tok ({}) exceeds the experts in topk_group ({}) groups of {}",
           source, c.num_experts_per_tok, c.topk_group, per_group);
    }
    if (c.topk_method == TopkMethod::kNoauxTc && c.n_group > 1 && per_group < 2) {
      Fail(
          "{}: noaux_tc group scores sum the top 2 experts of each group, but n_group ({}) leaves "
          "{} expert per group",
          source, c.n_group, per_group);
    }
  }

  c.rms_norm_eps = f.Number("rms_norm_eps", 1e-6, 0, 1);
  c.rope_theta = f.Number("rope_theta", 10000.0, 1, 1e12);
  if (const Json* rs = f.Find("rope_scaling")) {
    if (!rs->is_object()) f.Bad("rope_scaling", "an object or null");
    const FieldReader r(*rs, source + " rope_scaling");
    std::optional<std::string> type = r.String("type");
    if (!type) type = r.String("rope_type");
    if (!type) Fail("{}: rope_scaling needs 'type' (or 'rope_type')", source);
    if (*type != "yarn") {
      Fail("{}: rope_scaling type '{}' is not supported; DeepSeek models use 'yarn'", source,
           *type);
    }
    YarnScaling y;
    y.factor = r.Number("factor", std::nullopt, 1e-3, 1e6);
    y.original_max_position_embeddings =
        r.Int("original_max_position_embeddings", std::nullopt, 1, int64_t{1} << 31);
    y.beta_fast = r.Number("beta_fast", 32.0, 1e-6, 1e6);
    y.beta_slow = r.Number("beta_slow", 1.0, 1e-6, 1e6);
    y.mscale = r.Number("mscale", 1.0, 0, 1e6);
    y.mscale_all_dim = r.Number("mscale_all_dim", 0.0, 0, 1e6);
    c.rope_scaling = y;
  }
  c.tie_word_embeddings = f.Bool("tie_word_embeddings", false);
  c.num_nextn_predict_layers = f.Int("num_nextn_predict_layers", 0, 0, 64);

  if (const Json* q = f.Find("quantization_config")) {
    if (!q->is_object()) f.Bad("quantization_config", "an object");
    const FieldReader r(*q, source + " quantization_config");
    const auto method = r.String("quant_method");
    if (method != "fp8") {
      Fail(
          "{}: quantization_config.quant_method '{}' is not supported (only 'fp8' block "
          "quantization)",
          source, method.value_or(""));
    }
    if (const auto fmt = r.String("fmt"); fmt && *fmt != "e4m3") {
      Fail("{}: quantization_config.fmt '{}' is not supported (only 'e4m3')", source, *fmt);
    }
    if (const auto act = r.String("activation_scheme"); act && *act != "dynamic") {
      Fail("{}: quantization_config.activation_scheme '{}' is not supported (only 'dynamic')",
           source, *act);
    }
    const Json* block = r.Find("weight_block_size");
    if (block == nullptr || !block->is_array() || block->size() != 2 ||
        !(*block)[0].is_number_integer() || !(*block)[1].is_number_integer() ||
        (*block)[0].get<int64_t>() < 1 || (*block)[1].get<int64_t>() < 1 ||
        (*block)[0].get<int64_t>() > kMaxDim || (*block)[1].get<int64_t>() > kMaxDim) {
      Fail("{}: quantization_config.weight_block_size must be [rows, cols] of positive integers",
           source);
    }
    c.quant_block_rows = (*block)[0].get<int64_t>();
    c.quant_block_cols = (*block)[1].get<int64_t>();
  }

  if (const auto act = f.String("hidden_act"); act && *act != "silu") {
    Fail("{}: field 'hidden_act' is '{}'; DeepSeek models use 'silu'", source, *act);
  }
  if (f.Bool("attention_bias", false)) {
    Fail("{}: field 'attention_bias' is true; biased attention projections are not supported",
         source);
  }
  if (!f.Bool("use_mla", true)) {
    Fail("{}: field 'use_mla' is false; only multi-head latent attention is supported", source);
  }
  c.bos_token_id = f.Int("bos_token_id", -1, 0, c.vocab_size - 1);
  if (const Json* eos = f.Find("eos_token_id")) {
    const Json list = eos->is_array() ? *eos : Json::array({*eos});
    for (const Json& e : list) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= c.vocab_size) {
        f.Bad("eos_token_id", "a token id below vocab_size (or a list of them)");
      }
      c.eos_token_ids.push_back(e.get<int64_t>());
    }
  }
  return c;
}

Config Config::Load(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  if (!std::filesystem::exists(path)) {
    Fail("{}: missing (a model folder needs config.json next to its safetensors)", path);
  }
  return FromJson(ReadJsonFile(path, kMaxConfigJsonBytes), path);
}

}  // namespace dsv3
