// A model's architecture as the co-design analysis sees it, read from the config.json of any
// supported family: DeepSeek (deepseek_v2, deepseek_v3: MLA + MoE + MTP, parsed and validated by
// model/config.h, tensors from model/tensor_specs.h) and the GQA comparison families (llama, qwen2,
// mistral; mixtral for MoE with GQA). Every weight tensor is listed with its shape, so byte counts
// per storage format are exact, partial quantization blocks included.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/json.h"
#include "model/config.h"
#include "model/model_info.h"

namespace dsv3::analysis {

enum class AttentionKind {
  kMla,  // multi-head latent attention: one latent row (C + R values) cached per token per layer
  kGqa,  // grouped-query attention (MHA when kv_heads == heads): K and V per KV head cached
};

// How a tensor is stored under the quantized formats (the split of DeepSeek's FP8 release).
enum class WeightClass {
  kQuantizable,  // linear weights inside decoder layers: attention, dense MLP, experts
  kHalf,         // kept 16-bit in every format: embedding, lm_head, router, norms, biases
  kF32,          // kept float32 in every format: the routing correction bias (as DeepSeek ships it)
};

// Which part of an MTP module a tensor belongs to (kNone for main-model tensors).
enum class MtpPart { kNone, kBlock, kProjection, kNorm, kEmbeddingCopy, kHeadCopy };

struct WeightTensor {
  std::string name;  // Hugging Face name
  int64_t rows = 0;  // [out, in] for matrices
  int64_t cols = 1;  // 1 for vectors
  WeightClass cls = WeightClass::kHalf;
  bool input_embedding = false;  // the main model's embedding table (a row lookup per token)
  int64_t expert = -1;           // routed expert index within its layer, -1 otherwise
  int64_t mtp_module = -1;       // MTP module k, -1 for the main model
  MtpPart mtp_part = MtpPart::kNone;
  int64_t numel() const { return rows * cols; }
};

struct Arch {
  std::string source;              // the config.json path
  std::string name;                // a short label: the file or folder name
  std::string model_type;          // as in config.json
  std::optional<Config> deepseek;  // the validated DeepSeek config (deepseek_v2 / deepseek_v3)

  AttentionKind attention = AttentionKind::kGqa;
  int64_t layers = 0, hidden = 0, heads = 0, vocab = 0;
  int64_t kv_heads = 0;                            // GQA
  int64_t qk_head_dim = 0, v_head_dim = 0;         // per attention head; MLA: N + R and V
  int64_t kv_lora_rank = 0, qk_rope_head_dim = 0;  // MLA: C and R
  int64_t sliding_window = 0;                      // 0: every layer attends over the whole context

  // MoE (0 routed experts: dense)
  int64_t moe_layers = 0, routed_experts = 0, experts_per_token = 0, shared_experts = 0;
  int64_t mtp_modules = 0;  // num_nextn_predict_layers
  bool tie_word_embeddings = false;

  // Storage of the checkpoint this config describes: "fp8" (block-quantized) or "bf16" (16-bit).
  std::string stored_format = "bf16";
  int64_t fp8_block_rows = 128, fp8_block_cols = 128;  // from quantization_config when present

  std::vector<WeightTensor> tensors;  // main model, then MTP modules
  ParamCounts params;                 // the convention of model/model_info.h

  bool is_moe() const { return routed_experts > 0; }
  std::string AttentionLabel() const;  // "MLA", "GQA (8 KV heads)", "MHA"
};

// Reads a config.json file, or DIR/config.json for a model folder.
Arch LoadArch(const std::string& config_or_dir);
// `source` names the file in errors and is the label's origin.
Arch ArchFromJson(const Json& json, const std::string& source);

// The families ArchFromJson accepts, for messages: "deepseek_v2, deepseek_v3, llama, ...".
const char* SupportedModelTypes();

}  // namespace dsv3::analysis
