// Feed-forward blocks: the dense SwiGLU MLP and DeepSeekMoE (router + routed experts + shared
// experts).
#pragma once

#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "model/config.h"
#include "model/profile.h"
#include "model/trace.h"
#include "model/weights.h"

namespace dsv3 {

class Mlp {
 public:
  Mlp(int64_t max_batch, int64_t max_intermediate);
  // out [T, D] = down(silu(gate(x)) * up(x)), x [T, D].
  void Forward(const MlpWeights& w, const float* x, int64_t T, float* out);
  size_t scratch_bytes() const { return sizeof(float) * (gate_.size() + up_.size()); }

 private:
  AlignedArray<float> gate_, up_;  // [B, I]
};

struct RouterScratch {
  explicit RouterScratch(const Config& c);
  std::vector<float> scores, choice;  // [E]
  std::vector<float> group_score;     // [n_group]
  std::vector<int32_t> kept_groups;   // [topk_group]
};

// Routing of one token: choice scores, group limit, top-k, weights (see Gate in model.py).
// logits [E] (router output, float32); bias [E] or null; indices / weights [K], the indices in
// descending choice score, ties to the lower index.
void RouteToken(const Config& c, const float* logits, const float* bias, RouterScratch& scratch,
                int32_t* indices, float* weights);

class Moe {
 public:
  Moe(const Config& c, int64_t max_batch);
  // out [T, D] = sum_k w_k Expert_k(xn) + Shared(xn), xn [T, D].
  void Forward(const MoeWeights& w, int64_t layer, const float* xn, int64_t T, float* out,
               ForwardTrace* trace);
  void set_profile(ForwardProfile* profile) { profile_ = profile; }
  size_t scratch_bytes() const;

 private:
  const Config& c_;
  ForwardProfile* profile_ = nullptr;
  Mlp mlp_;
  AlignedArray<float> logits_;  // [B, E]
  RouterScratch router_scratch_;
  std::vector<int32_t> indices_;                     // [B, K]
  std::vector<float> weights_;                       // [B, K]
  std::vector<int32_t> count_, first_, slot_token_;  // tokens grouped by expert
  std::vector<float> slot_weight_;
  AlignedArray<float> gathered_, expert_out_;  // [B, D]
};

}  // namespace dsv3
