#include "analysis/arch.h"

#include <filesystem>

#include "core/error.h"
#include "core/json_fields.h"
#include "model/tensor_specs.h"

namespace dsv3::analysis {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxDim = 1 << 20;  // far above any published model, small enough to be safe

// "a/b/deepseek-v3.json" -> "deepseek-v3"; "a/model/config.json" -> "model".
std::string LabelOf(const std::string& source) {
  const fs::path p(source);
  if (p.filename() == "config.json" && p.has_parent_path()) {
    const fs::path parent = p.parent_path().filename();
    if (!parent.empty() && parent != "." && parent != "..") return parent.string();
  }
  return p.stem().string();
}

// The routed expert index of "model.layers.L.mlp.experts.E.<...>", or -1.
int64_t ExpertIndex(const std::string& name) {
  const std::string key = ".mlp.experts.";
  const size_t at = name.find(key);
  if (at == std::string::npos) return -1;
  return std::stoll(name.substr(at + key.size()));
}

WeightTensor FromSpec(const TensorSpec& s) {
  WeightTensor t;
  t.name = s.name;
  t.rows = s.shape.at(0);
  t.cols = s.shape.size() > 1 ? s.shape[1] : 1;
  if (s.role == TensorRole::kBias) {
    t.cls = WeightClass::kF32;
  } else if (s.role == TensorRole::kLinear && s.fp8_in_release) {
    t.cls = WeightClass::kQuantizable;
  }
  t.expert = ExpertIndex(s.name);
  return t;
}

MtpPart MtpPartOf(const std::string& name, const std::string& prefix) {
  const std::string rest = name.substr(prefix.size());
  if (rest == "embed_tokens.weight") return MtpPart::kEmbeddingCopy;
  if (rest == "shared_head.head.weight") return MtpPart::kHeadCopy;
  if (rest == "eh_proj.weight") return MtpPart::kProjection;
  if (rest == "enorm.weight" || rest == "hnorm.weight" || rest == "shared_head.norm.weight") {
    return MtpPart::kNorm;
  }
  return MtpPart::kBlock;  // the decoder layer: norms, attention, MoE
}

Arch FromDeepSeek(const Json& json, const std::string& source) {
  const Config c = Config::FromJson(json, source);
  Arch a;
  a.attention = AttentionKind::kMla;
  a.layers = c.num_hidden_layers;
  a.hidden = c.hidden_size;
  a.heads = c.num_attention_heads;
  a.vocab = c.vocab_size;
  a.qk_head_dim = c.qk_head_dim();
  a.v_head_dim = c.v_head_dim;
  a.kv_lora_rank = c.kv_lora_rank;
  a.qk_rope_head_dim = c.qk_rope_head_dim;
  a.routed_experts = c.n_routed_experts;
  a.experts_per_token = c.num_experts_per_tok;
  a.shared_experts = c.n_shared_experts;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) a.moe_layers += c.IsMoeLayer(l) ? 1 : 0;
  a.mtp_modules = c.num_nextn_predict_layers;
  a.tie_word_embeddings = c.tie_word_embeddings;
  if (c.quant_block_rows > 0) {
    a.stored_format = "fp8";
    a.fp8_block_rows = c.quant_block_rows;
    a.fp8_block_cols = c.quant_block_cols;
  }
  // Shapes come from the engine's own tensor list, the one checkpoints are validated against.
  for (const TensorSpec& s : MainTensorSpecs(c)) {
    a.tensors.push_back(FromSpec(s));
    a.tensors.back().input_embedding = s.role == TensorRole::kEmbedding;
  }
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string prefix = LayerPrefix(c.num_hidden_layers + k);
    for (const TensorSpec& s : MtpTensorSpecs(c, k)) {
      a.tensors.push_back(FromSpec(s));
      a.tensors.back().mtp_module = k;
      a.tensors.back().mtp_part = MtpPartOf(s.name, prefix);
    }
  }
  a.params = CountParams(c);
  a.deepseek = c;
  return a;
}

// Hugging Face LlamaForCausalLM-style layouts: llama, qwen2, mistral (dense) and mixtral (MoE).
Arch FromGqa(const Json& json, const std::string& source, const std::string& type) {
  const FieldReader f(json, source);
  Arch a;
  a.attention = AttentionKind::kGqa;
  a.hidden = f.Int("hidden_size", std::nullopt, 1, kMaxDim);
  a.layers = f.Int("num_hidden_layers", std::nullopt, 1, 4096);
  a.heads = f.Int("num_attention_heads", std::nullopt, 1, 4096);
  // Hugging Face's Llama and Qwen2 configs fall back to one KV head per query head (MHA);
  // Mistral's and Mixtral's default (8) is a model size, so it must be given.
  const bool mha_default = type == "llama" || type == "qwen2";
  a.kv_heads = f.Int("num_key_value_heads",
                     mha_default ? std::optional<int64_t>(a.heads) : std::nullopt, 1, a.heads);
  if (a.heads % a.kv_heads != 0) {
    Fail("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", source,
         a.heads, a.kv_heads);
  }
  if (f.Find("head_dim") == nullptr && a.hidden % a.heads != 0) {
    Fail(
        "{}: required field 'head_dim' is missing and hidden_size ({}) is not a multiple of "
        "num_attention_heads ({})",
        source, a.hidden, a.heads);
  }
  const int64_t head_dim = f.Int("head_dim", a.hidden / a.heads, 1, kMaxDim);
  a.qk_head_dim = a.v_head_dim = head_dim;
  const int64_t inter = f.Int("intermediate_size", std::nullopt, 1, kMaxDim);
  a.vocab = f.Int("vocab_size", std::nullopt, 1, 1 << 24);
  a.tie_word_embeddings = f.Bool("tie_word_embeddings", false);
  if (type == "mixtral") {
    a.routed_experts = f.Int("num_local_experts", std::nullopt, 1, 1 << 16);
    a.experts_per_token = f.Int("num_experts_per_tok", std::nullopt, 1, a.routed_experts);
    a.moe_layers = a.layers;
  }
  if (type == "mistral" || type == "mixtral") {
    a.sliding_window = f.Int("sliding_window", 0, 1, int64_t{1} << 40);
  } else if (type == "qwen2" && f.Bool("use_sliding_window", false)) {
    Fail(
        "{}: field 'use_sliding_window' is true; per-layer sliding windows (max_window_layers) "
        "are not modelled",
        source);
  }
  // Projection biases: Qwen2 has them on q, k and v; Llama on all four when attention_bias and
  // on the MLP when mlp_bias; Mistral and Mixtral have none.
  const bool qkv_bias = type == "qwen2" || (type == "llama" && f.Bool("attention_bias", false));
  const bool o_bias = type == "llama" && f.Bool("attention_bias", false);
  const bool mlp_bias = type == "llama" && f.Bool("mlp_bias", false);

  const int64_t D = a.hidden, H = a.heads, KV = a.kv_heads, hd = head_dim;
  auto add = [&a](std::string name, int64_t rows, int64_t cols, WeightClass cls,
                  int64_t expert = -1) {
    WeightTensor t;
    t.name = std::move(name);
    t.rows = rows;
    t.cols = cols;
    t.cls = cls;
    t.expert = expert;
    a.tensors.push_back(std::move(t));
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias,
                    int64_t expert = -1) {
    add(name + ".weight", out, in, WeightClass::kQuantizable, expert);
    if (bias) add(name + ".bias", out, 1, WeightClass::kHalf);
  };
  add("model.embed_tokens.weight", a.vocab, D, WeightClass::kHalf);
  a.tensors.back().input_embedding = true;
  for (int64_t l = 0; l < a.layers; ++l) {
    const std::string p = LayerPrefix(l);
    add(p + "input_layernorm.weight", D, 1, WeightClass::kHalf);
    linear(p + "self_attn.q_proj", H * hd, D, qkv_bias);
    linear(p + "self_attn.k_proj", KV * hd, D, qkv_bias);
    linear(p + "self_attn.v_proj", KV * hd, D, qkv_bias);
    linear(p + "self_attn.o_proj", D, H * hd, o_bias);
    add(p + "post_attention_layernorm.weight", D, 1, WeightClass::kHalf);
    if (a.is_moe()) {
      add(p + "block_sparse_moe.gate.weight", a.routed_experts, D, WeightClass::kHalf);
      for (int64_t e = 0; e < a.routed_experts; ++e) {
        const std::string x = p + "block_sparse_moe.experts." + std::to_string(e);
        linear(x + ".w1", inter, D, false, e);
        linear(x + ".w2", D, inter, false, e);
        linear(x + ".w3", inter, D, false, e);
      }
    } else {
      linear(p + "mlp.gate_proj", inter, D, mlp_bias);
      linear(p + "mlp.up_proj", inter, D, mlp_bias);
      linear(p + "mlp.down_proj", D, inter, mlp_bias);
    }
  }
  add("model.norm.weight", D, 1, WeightClass::kHalf);
  if (!a.tie_word_embeddings) add("lm_head.weight", a.vocab, D, WeightClass::kHalf);

  // The counting convention of CountParams (model/model_info.h), applied to this tensor list.
  for (const WeightTensor& t : a.tensors) {
    a.params.total += t.numel();
    if (t.expert >= a.experts_per_token) a.params.activated_with_embedding -= t.numel();
  }
  a.params.embedding = a.vocab * D;
  a.params.activated_with_embedding += a.params.total;
  a.params.activated =
      a.params.activated_with_embedding - (a.tie_word_embeddings ? 0 : a.params.embedding);
  return a;
}

}  // namespace

const char* SupportedModelTypes() {
  return "deepseek_v2, deepseek_v3 (MLA + MoE), llama, qwen2, mistral (GQA), mixtral (GQA + MoE)";
}

std::string Arch::AttentionLabel() const {
  if (attention == AttentionKind::kMla) return "MLA";
  if (kv_heads == heads) return "MHA";
  return fmt::format("GQA ({} KV heads)", kv_heads);
}

Arch ArchFromJson(const Json& json, const std::string& source) {
  if (!json.is_object()) Fail("{}: expected a JSON object", source);
  const auto model_type = FieldReader(json, source).String("model_type");
  if (!model_type) {
    Fail("{}: required field 'model_type' is missing (supported: {})", source,
         SupportedModelTypes());
  }
  Arch a;
  if (*model_type == "deepseek_v2" || *model_type == "deepseek_v3") {
    a = FromDeepSeek(json, source);
  } else if (*model_type == "llama" || *model_type == "qwen2" || *model_type == "mistral" ||
             *model_type == "mixtral") {
    a = FromGqa(json, source, *model_type);
  } else {
    Fail("{}: field 'model_type' is '{}', which the analyzer does not support (supported: {})",
         source, *model_type, SupportedModelTypes());
  }
  a.source = source;
  a.name = LabelOf(source);
  a.model_type = *model_type;
  return a;
}

Arch LoadArch(const std::string& config_or_dir) {
  std::string path = config_or_dir;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    path = (fs::path(path) / "config.json").string();
    if (!fs::exists(path, ec)) {
      Fail("{}: missing (a model folder needs config.json)", path);
    }
  } else if (!fs::exists(path, ec)) {
    Fail("{}: no such config.json or model folder", path);
  }
  return ArchFromJson(ReadJsonFile(path, 16u << 20), path);
}

}  // namespace dsv3::analysis
