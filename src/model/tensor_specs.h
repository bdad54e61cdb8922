// The tensors a config implies, by Hugging Face name, with their shapes: the single source of truth
// for validating a checkpoint before the first token and for writing synthetic ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace dsv3 {

enum class TensorRole {
  kEmbedding,  // [vocab, D], any float dtype
  kNorm,       // [n], any float dtype (converted to float32 at load)
  kLinear,     // [out, in], F32/BF16/F16, or F8_E4M3 with a sibling `<name>_scale_inv`
  kBias,       // [n], F32 or BF16
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role;
  bool fp8_in_release = false;  // stored FP8 in DeepSeek's FP8 releases (attention, MLPs, experts)
};

// Tensors of the main model (embedding, decoder layers, final norm, lm_head unless tied).
std::vector<TensorSpec> MainTensorSpecs(const Config& c);
// Tensors of MTP layer k (stored as model.layers.{num_hidden_layers + k}).
std::vector<TensorSpec> MtpTensorSpecs(const Config& c, int64_t k);
// Prefix "model.layers.{i}." for layer i.
std::string LayerPrefix(int64_t layer);

}  // namespace dsv3
