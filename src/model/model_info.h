// Size figures of a config: parameters stored and activated per token, KV cache per token.
#pragma once

#include <array>
#include <cstdint>

#include "model/config.h"
#include "model/profile.h"
#include "model/weights.h"

namespace dsv3 {

// Counting convention (the DeepSeek-V3 paper's): `total` counts every main-model tensor with the
// input embedding and lm_head included and MTP layers excluded; `activated` is what one token
// touches: total minus the routed experts it does not select, with the input embedding EXCLUDED
// (a row lookup, not a matmul); `activated_with_embedding` adds it back.
struct ParamCounts {
  int64_t total = 0;
  int64_t embedding = 0;
  int64_t activated = 0;
  int64_t activated_with_embedding = 0;
  int64_t mtp = 0;  // all MTP layers, including their embedding / head copies
};

ParamCounts CountParams(const Config& c);

// Latent KV cache bytes per token: layers * (kv_lora_rank + qk_rope_head_dim) * bytes_per_value.
inline int64_t KvBytesPerToken(const Config& c, int64_t bytes_per_value) {
  return c.num_hidden_layers * c.kv_width() * bytes_per_value;
}

// Weight bytes one decoded token reads (scales included): every attention and dense weight, the
// router, K routed experts and the shared experts of each MoE layer, one embedding row, lm_head.
uint64_t WeightBytesPerToken(const Config& c, const Weights& w);

// The same bytes by the phase of a decode step that reads them (they add up to
// WeightBytesPerToken): embed one row; attn_project the query and latent projections and the
// attention norms; attn_core kv_b_proj (the absorbed W_uk / W_uv; the latent cache rows come on
// top, see KvBytesPerToken); attn_out o_proj; router the router, bias and MoE layers' ffn norm;
// experts the K routed and the shared experts; dense_mlp the dense layers' MLP and norm; lm_head
// it and the final norm.
using PhaseBytes = std::array<uint64_t, static_cast<size_t>(Phase::kCount)>;
PhaseBytes WeightBytesPerPhase(const Config& c, const Weights& w);

}  // namespace dsv3
