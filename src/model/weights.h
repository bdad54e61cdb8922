// Typed views of a checkpoint's tensors, bound by Hugging Face name and validated (presence, dtype,
// shape, FP8 scales) against the tensor specs before the first token. Large weights stay in the
// mapped files in their stored dtype; only norm vectors and the routing bias become float32 copies.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/matmul.h"
#include "model/config.h"

namespace dsv3 {

using kernels::WeightMatrix;

struct MlpWeights {       // down(silu(gate(x)) * up(x))
  WeightMatrix gate, up;  // [I, D]
  WeightMatrix down;      // [D, I]
};

struct MlaWeights {
  WeightMatrix q_a;              // [q_lora, D]        (q_lora_rank > 0)
  std::vector<float> q_a_norm;   // [q_lora]
  WeightMatrix q_b;              // [H*(N+R), q_lora]
  WeightMatrix q;                // [H*(N+R), D]       (q_lora_rank == 0)
  WeightMatrix kv_a;             // [C+R, D]
  std::vector<float> kv_a_norm;  // [C]
  WeightMatrix kv_b;             // [H*(N+V), C]: per head W_uk [N, C] then W_uv [V, C]
  WeightMatrix o;                // [D, H*V]
};

struct MoeWeights {
  WeightMatrix router;                 // [E, D]
  std::vector<float> correction_bias;  // [E] (noaux_tc), empty otherwise
  std::vector<MlpWeights> experts;     // E of [Im, D] / [D, Im]
  MlpWeights shared;                   // n_shared * Im wide; empty when n_shared_experts == 0
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [D]
  MlaWeights attn;
  bool is_moe = false;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
};

struct Weights {
  WeightMatrix embed;  // [vocab, D]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [D]
  WeightMatrix lm_head;           // [vocab, D] (the embedding when tied)
};

// An MTP module (DeepSeek-V3 section 2.2), stored as layer num_hidden_layers + k.
struct MtpWeights {
  WeightMatrix embed;            // [vocab, D]; the main embedding when the stored copy is identical
  std::vector<float> enorm;      // [D]
  std::vector<float> hnorm;      // [D]
  WeightMatrix eh_proj;          // [D, 2D]: input [RmsNorm(embedding) | RmsNorm(hidden)]
  LayerWeights layer;            // a full decoder layer
  std::vector<float> head_norm;  // [D] shared_head.norm
  WeightMatrix head;             // [vocab, D] shared_head.head; the main lm_head when identical
  bool shares_embed = false, shares_head = false;
};

struct LoadReport {
  std::vector<std::string> unused;  // tensors in the checkpoint that nothing reads
  int64_t mtp_tensors = 0;          // tensors of the MTP layers
  int64_t mtp_layers = 0;           // MTP modules bound (0 when the checkpoint has none)
  uint64_t main_bytes = 0;          // bytes of the tensors the main model reads (held here)
  uint64_t mtp_bytes = 0;           // of the MTP layers (their held experts only)
  uint64_t elsewhere_bytes = 0;     // routed experts another process holds (expert parallelism)
};

// Which routed experts this process holds (the same in every layer); empty: all of them.
using ExpertFilter = std::function<bool(int64_t expert)>;

// Binds and validates every main-model tensor, and the MTP modules when the checkpoint has them
// (a checkpoint may omit them all; a partial module is an error). Throws dsv3::Error naming the
// first bad tensor. Routed experts that `holds` rejects are validated but left unbound (empty
// MlpWeights): their bytes are never touched here.
Weights BindWeights(const Config& config, const Checkpoint& ckpt, LoadReport* report,
                    std::vector<MtpWeights>* mtp, const ExpertFilter& holds = {});

}  // namespace dsv3
