// Feed-forward blocks: the dense SwiGLU MLP and DeepSeekMoE (router + routed experts + shared
// experts).
#pragma once

#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "kernels/matmul.h"
#include "model/config.h"
#include "model/process_group.h"
#include "model/profile.h"
#include "model/step.h"
#include "model/weights.h"

namespace dsv3 {

// Runs several SwiGLU MLPs (the selected experts, the shared experts, or one dense MLP), each on
// its own rows of input, as one pass: the gate and up projections of all of them form one row
// space split evenly across threads, then the down projections do. Each weight row is read once
// per step, by one thread, for all the tokens its MLP sees.
class MlpBatch {
 public:
  MlpBatch(int64_t max_jobs, int64_t max_rows, int64_t max_intermediate, int64_t hidden);

  void Clear() { jobs_.clear(); }
  // out [n, D] = down(silu(gate(x)) * up(x)) for x [n, D] (rows D floats apart), run by Run().
  void Add(const MlpWeights& w, const float* x, int64_t n, float* out);
  void Run(const kernels::MatMulOptions& options = {});
  // One MLP on its own: Add + Run.
  void Forward(const MlpWeights& w, const float* x, int64_t n, float* out,
               const kernels::MatMulOptions& options = {}) {
    Add(w, x, n, out);
    Run(options);
  }
  size_t scratch_bytes() const { return sizeof(float) * hidden_.size(); }

 private:
  struct Job {
    const MlpWeights* w;
    const float* x;
    int64_t n;
    float* out;
    float* hidden;  // [n, 2I]: gate | up, then silu(gate) * up in the gate half
  };
  int64_t D_;
  std::vector<Job> jobs_;
  int64_t hidden_used_ = 0;
  AlignedArray<float> hidden_;
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
  // With a process group, the routed experts run on the ranks that hold them (RoutedExperts);
  // the router and the shared experts run here.
  Moe(const Config& c, int64_t max_batch, ProcessGroup* group = nullptr);
  // out [T, D] = sum_k w_k Expert_k(xn) + Shared(xn), xn [T, D] for the step's T tokens; the
  // routing of checkpoint layer `layer` goes to the step's trace.
  void Forward(const ForwardStep& step, const MoeWeights& w, int64_t layer, const float* xn,
               float* out);
  void set_profile(ForwardProfile* profile) { profile_ = profile; }
  size_t scratch_bytes() const;

 private:
  void Route(const ForwardStep& step, const MoeWeights& w, int64_t layer, const float* xn);

  const Config& c_;
  ProcessGroup* group_;
  ForwardProfile* profile_ = nullptr;
  MlpBatch mlps_;
  AlignedArray<float> logits_;  // [B, E]
  RouterScratch router_scratch_;
  std::vector<int32_t> indices_;                     // [B, K]
  std::vector<float> weights_;                       // [B, K]
  std::vector<int32_t> count_, first_, slot_token_;  // tokens grouped by expert
  std::vector<float> slot_weight_;
  AlignedArray<float> gathered_, expert_out_;  // [B*K, D] token rows grouped by expert
  AlignedArray<float> shared_out_;             // [B, D]
};

}  // namespace dsv3
