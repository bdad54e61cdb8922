// Optional wall-clock accounting of a forward pass by phase, for `dsv3 bench`. A null profile
// costs one branch per phase.
#pragma once

#include <chrono>

namespace dsv3 {

enum class Phase {
  kEmbed,
  kAttnProject,  // q / kv_a projections, norms, RoPE, cache write
  kAttnCore,     // attention over the latent cache, incl. the W_uk / W_uv absorption
  kAttnOut,      // o_proj
  kRouter,
  kExperts,  // routed and shared experts
  kDenseMlp,
  kLmHead,  // final norm + lm_head
  kCount
};

struct ForwardProfile {
  double seconds[static_cast<int>(Phase::kCount)] = {};
  double& operator[](Phase p) { return seconds[static_cast<int>(p)]; }
  double operator[](Phase p) const { return seconds[static_cast<int>(p)]; }
  double Total() const {
    double t = 0;
    for (double s : seconds) t += s;
    return t;
  }
  static const char* Name(Phase p) {
    static const char* kNames[] = {"embed",  "attn_project", "attn_core", "attn_out",
                                   "router", "experts",      "dense_mlp", "lm_head"};
    return kNames[static_cast<int>(p)];
  }
};

// Adds the time between construction and destruction to `profile[phase]`.
class PhaseTimer {
 public:
  PhaseTimer(ForwardProfile* profile, Phase phase) : profile_(profile), phase_(phase) {
    if (profile_) start_ = std::chrono::steady_clock::now();
  }
  ~PhaseTimer() {
    if (profile_) {
      (*profile_)[phase_] +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
  }

 private:
  ForwardProfile* profile_;
  Phase phase_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dsv3
