// The trainer's parameters: every trainable tensor of a config in float32 (the master weights),
// laid end to end in one buffer with a gradient buffer of the same layout, plus the
// aux-loss-free routing biases, which are state but not parameters (no gradient, changed only by
// the bias update). Names and shapes come from the tensor specs (model/tensor_specs.h), so the
// trainer covers exactly what the inference engine loads. DeepSeek-V3 shares the embedding and
// the output head between the main model and its MTP modules: the MTP copies are tied to the
// main tensors, not parameters of their own.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "model/config.h"

namespace dsv3 {

class Checkpoint;

namespace train {

struct ParamInfo {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;  // [out, in] for linear layers, [n] for norms
  int64_t offset = 0;          // into Params::values / grads, 16-float aligned
  int64_t numel = 0;
  bool weight_decay = false;    // 2-D tensors decay, 1-D (norm weights) do not
  bool fp8_in_release = false;  // stored as FP8 E4M3 in DeepSeek's FP8 releases
};

class Params {
 public:
  // The parameters `c` implies: main model, then MTP modules (num_nextn_predict_layers), without
  // the tied MTP copies; values zero.
  explicit Params(const Config& c);

  const Config& config() const { return config_; }
  const std::vector<ParamInfo>& list() const { return list_; }
  int64_t total() const { return total_; }               // parameters, without padding
  const ParamInfo* Find(const std::string& name) const;  // nullptr when absent
  float* value(const std::string& name);                 // throws naming the tensor when absent
  float* grad(const std::string& name);
  float* values() { return values_.data(); }
  float* grads() { return grads_.data(); }
  const float* values() const { return values_.data(); }
  const float* grads() const { return grads_.data(); }
  size_t buffer_size() const { return values_.size(); }  // floats, with padding
  void ZeroGrads();

  // Routing biases of the noaux_tc layers (main and MTP), by tensor name, [E] each.
  std::map<std::string, std::vector<float>>& biases() { return biases_; }
  const std::map<std::string, std::vector<float>>& biases() const { return biases_; }
  std::vector<float>* bias(const std::string& name);  // nullptr when the layer has none

  // Tied names: MTP copy -> main tensor ("model.layers.3.embed_tokens.weight" ->
  // "model.embed_tokens.weight").
  const std::map<std::string, std::string>& tied() const { return tied_; }

  // Values from a checkpoint of this config (F32, BF16, F16, or FP8 E4M3 with its
  // weight_scale_inv blocks, dequantized). Throws naming the tensor on a missing tensor or a
  // shape mismatch; a tied copy that differs from its main tensor is an error too.
  void Load(const Checkpoint& ckpt);
  // Random initialization as Hugging Face's DeepSeek models do: linear and embedding weights
  // normal(0, std), norm weights 1, biases 0; deterministic in `seed`, independent of threads.
  void Init(double std, uint64_t seed);

 private:
  Config config_;
  std::vector<ParamInfo> list_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::vector<float>> biases_;
  std::map<std::string, std::string> tied_;
  AlignedArray<float> values_, grads_;
  int64_t total_ = 0;
};

// The float32 values of a stored tensor (dequantized; FP8 through its `<name>_scale_inv`, one
// scale per block_rows x block_cols block, config.json's weight_block_size).
std::vector<float> ReadTensorF32(const Checkpoint& ckpt, const std::string& name,
                                 int64_t block_rows, int64_t block_cols);

}  // namespace train
}  // namespace dsv3
