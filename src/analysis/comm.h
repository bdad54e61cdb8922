// Decode-time communication and speculation: the time per output token that expert-parallel
// dispatch/combine over a network allows (the co-design paper, Section 2.3.2), and the speedup of
// MTP self-speculative decoding from an acceptance rate and the cost of a draft.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "analysis/arch.h"

namespace dsv3::analysis {

struct Interconnect {
  std::string name;
  double bandwidth_gbs = 0;  // per device, one direction, GB/s = 1e9 B/s
  std::string description;
};
const std::vector<Interconnect>& InterconnectPresets();
Interconnect FindInterconnect(const std::string& name);  // fails listing the presets

// Each device holds one expert (routed or shared) per layer and handles `tokens_per_device`
// tokens per micro-batch; each token goes to `fan_out` experts.
struct EpOptions {
  double hidden = 0;  // values per token sent; the config's hidden_size by default
  int64_t tokens_per_device = 32;
  int64_t fan_out = 0;        // experts per token: num_experts_per_tok + n_shared_experts
  double dispatch_bytes = 1;  // bytes per value sent to the experts (FP8)
  double combine_bytes = 2;   // bytes per value sent back (BF16)
  int64_t micro_batches = 2;  // dispatch+combine rounds per layer (two overlapped batches)
  int64_t layers = 0;         // num_hidden_layers by default
  double bandwidth_gbs = 0;
};
// hidden, fan_out and layers from a MoE config; fails for a dense one.
EpOptions EpDefaultsFor(const Arch& a);

struct EpResult {
  double bytes_per_round = 0;  // (dispatch + combine) * tokens * fan_out * hidden
  double comm_us_per_round = 0;
  double us_per_layer = 0;  // micro_batches rounds
  double tpot_ms = 0;       // layers * micro_batches * round
  double tokens_per_s = 0;  // per sequence: 1 / TPOT
};
EpResult ExpertParallelDecode(const EpOptions& o);  // validates `o`

// MTP self-speculative decoding: each step the main model emits one token and `depth` MTP
// modules draft one more each; draft i is kept only when drafts 1..i were all accepted.
struct MtpOptions {
  double acceptance = 0.85;  // probability that a draft is accepted, given the previous ones were
  int64_t depth = 1;         // drafted tokens per step
  double draft_cost = 0;     // time of one draft relative to one main-model decode step
};
struct MtpResult {
  double tokens_per_step = 0;  // 1 + a + a^2 + ... + a^depth
  double step_cost = 0;        // 1 + depth * draft_cost (verification costs one decode step)
  double speedup = 0;          // tokens per step / step cost
};
MtpResult MtpSpeedup(const MtpOptions& o);  // validates `o`
// Draft cost estimated from weights read: one MTP module's activated parameters (embedding
// lookup excluded) over the main model's. 0 for a config without MTP modules.
double MtpDraftCostEstimate(const Arch& a);

}  // namespace dsv3::analysis
