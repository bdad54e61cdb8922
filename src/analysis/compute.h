// Compute figures of an architecture: training FLOPs per token at a sequence length (the exact
// count and the paper's dense approximation), decode FLOPs per token at a context length, and the
// decode speed one machine's memory bandwidth and FLOP rate allow.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "analysis/arch.h"
#include "analysis/memory.h"

namespace dsv3::analysis {

struct TrainingFlops {
  int64_t seq_len = 0;
  double attended = 0;   // average positions a token attends to: seq_len / 2 (causal)
  double weights = 0;    // 6 * N_activated (forward 2, backward 4 FLOPs per weight)
  double attention = 0;  // 6 * layers * heads * (qk_head_dim + v_head_dim) * attended
  double total = 0;
  // The paper's rough dense count, 72 * layers * hidden^2 + 6 * vocab * hidden: 12 hidden^2
  // weights per layer, no attention term. Shown beside the exact count, never instead of it.
  double paper_dense_approximation = 0;
};
TrainingFlops TrainingFlopsPerToken(const Arch& a, int64_t seq_len);

struct DecodeFlops {
  int64_t context = 0;
  int64_t attended = 0;  // positions the new token attends to (the context, or the window)
  double weights = 0;    // 2 * N_activated
  double attention = 0;  // 2 * layers * heads * (qk_head_dim + v_head_dim) * attended
  double total = 0;
  // MLA run absorbed (as this engine and DeepSeek's decode do): each head scores the C + R
  // latent row and sums C latent values, 2 * layers * heads * (2C + R) * attended. For GQA the
  // same as `attention`.
  double attention_absorbed = 0;
  double total_absorbed = 0;
};
DecodeFlops DecodeFlopsPerToken(const Arch& a, int64_t context);

// A machine for the single-machine decode bound: datasheet peaks, GB/s = 1e9 B/s, TFLOPS = 1e12.
struct Machine {
  std::string name;
  double bandwidth_gbs = 0;  // memory bandwidth
  double tflops = 0;         // dense BF16 tensor FLOP rate; 0 = not given
  std::string description;
};
const std::vector<Machine>& MachinePresets();
Machine FindMachine(const std::string& name);  // fails listing the presets

struct DecodeBound {
  Machine machine;
  WeightFormat weights = WeightFormat::kBf16;
  int64_t kv_bytes_per_value = 2;
  int64_t context = 0;
  int64_t weight_bytes = 0;  // activated weights read per token (CountWeightBytes().per_token)
  int64_t kv_bytes = 0;      // the whole cache of the sequence, read once per token
  int64_t bytes = 0;
  double memory_tokens_per_s = 0;
  double flops = 0;                 // DecodeFlops::total_absorbed
  double compute_tokens_per_s = 0;  // 0 when the machine has no FLOP rate
  double tokens_per_s = 0;          // the smaller of the two
  const char* bound_by = "memory";
};
// One sequence (batch 1) decoding at `context`.
DecodeBound DecodeBoundFor(const Arch& a, const Machine& m, WeightFormat weights,
                           int64_t group_size, int64_t kv_bytes_per_value, int64_t context);

}  // namespace dsv3::analysis
