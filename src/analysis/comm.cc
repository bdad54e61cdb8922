#include "analysis/comm.h"

#include <cmath>

#include "analysis/memory.h"
#include "analysis/presets.h"
#include "core/error.h"

namespace dsv3::analysis {

const std::vector<Interconnect>& InterconnectPresets() {
  static const std::vector<Interconnect> presets = {
      {"ib-400g", 50, "400 Gbps InfiniBand NIC per GPU (CX7): 50 GB/s"},
      {"nvl72", 900, "GB200 NVL72 NVLink: 900 GB/s per GPU per direction"},
  };
  return presets;
}

Interconnect FindInterconnect(const std::string& name) {
  return FindPreset(InterconnectPresets(), name, "--preset", "interconnect",
                    "or give --bandwidth-gbs");
}

EpOptions EpDefaultsFor(const Arch& a) {
  if (!a.is_moe()) {
    Fail("{}: {} is a dense model (no routed experts); expert-parallel decode needs a MoE config",
         a.source, a.model_type);
  }
  EpOptions o;
  o.hidden = static_cast<double>(a.hidden);
  // Shared experts are placed on devices like routed ones, so a token is sent to both.
  o.fan_out = a.experts_per_token + a.shared_experts;
  o.layers = a.layers;
  return o;
}

EpResult ExpertParallelDecode(const EpOptions& o) {
  if (!(o.hidden > 0)) Fail("--hidden must be positive, got {}", o.hidden);
  if (o.tokens_per_device < 1) {
    Fail("--tokens-per-device must be at least 1, got {}", o.tokens_per_device);
  }
  if (o.fan_out < 1) Fail("--fan-out must be at least 1, got {}", o.fan_out);
  if (!(o.dispatch_bytes > 0) || !(o.combine_bytes > 0)) {
    Fail("--dispatch-bytes and --combine-bytes must be positive, got {} and {}", o.dispatch_bytes,
         o.combine_bytes);
  }
  if (o.micro_batches < 1) Fail("--micro-batches must be at least 1, got {}", o.micro_batches);
  if (o.layers < 1) Fail("--layers must be at least 1, got {}", o.layers);
  if (!(o.bandwidth_gbs > 0)) Fail("--bandwidth-gbs must be positive, got {}", o.bandwidth_gbs);
  EpResult r;
  r.bytes_per_round = (o.dispatch_bytes + o.combine_bytes) *
                      static_cast<double>(o.tokens_per_device * o.fan_out) * o.hidden;
  r.comm_us_per_round = r.bytes_per_round / (o.bandwidth_gbs * 1e9) * 1e6;
  // Two micro-batches hide compute behind communication, so the link is busy the whole time:
  // each layer costs one round per micro-batch and nothing else.
  r.us_per_layer = r.comm_us_per_round * static_cast<double>(o.micro_batches);
  r.tpot_ms = r.us_per_layer * static_cast<double>(o.layers) / 1e3;
  r.tokens_per_s = 1e3 / r.tpot_ms;
  return r;
}

MtpResult MtpSpeedup(const MtpOptions& o) {
  if (!(o.acceptance >= 0 && o.acceptance <= 1)) {
    Fail("--acceptance must be in [0, 1], got {}", o.acceptance);
  }
  if (o.depth < 1 || o.depth > 64) Fail("--depth must be in [1, 64], got {}", o.depth);
  if (!(o.draft_cost >= 0 && std::isfinite(o.draft_cost))) {
    Fail("--draft-cost must be >= 0, got {}", o.draft_cost);
  }
  MtpResult r;
  // Expected tokens per step: the main model's token always counts; draft i counts with
  // probability acceptance^i (it and every draft before it accepted).
  double p = 1;
  for (int64_t i = 0; i <= o.depth; ++i) {
    r.tokens_per_step += p;
    p *= o.acceptance;
  }
  // Verifying depth + 1 tokens in one batched step reads the same weights as decoding one, so
  // in the memory-bound regime it costs one step; the drafts come on top.
  r.step_cost = 1 + static_cast<double>(o.depth) * o.draft_cost;
  r.speedup = r.tokens_per_step / r.step_cost;
  return r;
}

double MtpDraftCostEstimate(const Arch& a) {
  if (a.mtp_modules == 0 || a.params.activated == 0) return 0;
  return static_cast<double>(CountMtpParams(a).activated_per_draft) /
         static_cast<double>(a.params.activated);
}

}  // namespace dsv3::analysis
