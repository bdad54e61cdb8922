// One decoder layer step: h = x + MLA(RmsNorm(x)); x' = h + FFN(RmsNorm(h)), FFN a dense MLP or
// the MoE. One object holds the modules and scratch and runs every layer of a stack in turn.
#pragma once

#include <cstdint>
#include <string>

#include "core/aligned.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/mla.h"
#include "model/moe.h"
#include "model/process_group.h"
#include "model/profile.h"
#include "model/rope.h"
#include "model/step.h"
#include "model/weights.h"

namespace dsv3 {

class DecoderLayer {
 public:
  // `group`: the processes that share the routed experts (null: this process alone).
  DecoderLayer(const Config& c, const RopeTable& rope, int64_t max_batch, int64_t capacity,
               AttentionImpl attention, KvCacheType kv, ProcessGroup* group = nullptr);

  // x [T, D] in place for the step's tokens. The layer's latent rows go to `cache` layer
  // `cache_layer`; `layer` is the layer's index in the checkpoint (routing traces) and `name`
  // prefixes traced tensors. In a process group, a step of T = 0 tokens still takes part in the
  // MoE layer's exchange (which every rank runs for every layer).
  void Forward(const ForwardStep& step, const LayerWeights& w, int64_t layer, int64_t cache_layer,
               KvCache& cache, float* x, const std::string& name);

  void set_profile(ForwardProfile* profile);
  size_t scratch_bytes() const;

 private:
  const Config& c_;
  ForwardProfile* profile_ = nullptr;
  Mla mla_;
  MlpBatch mlp_;  // dense layers
  Moe moe_;
  AlignedArray<float> xn_;  // [B, D] normalized input of a block
  AlignedArray<float> y_;   // [B, D] block output
};

}  // namespace dsv3
