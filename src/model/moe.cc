// DeepSeekMoE. The router scores every routed expert; only the top K per token run, and the
// experts' weights are read only for experts some token selected. Tokens are grouped by expert
// so each selected expert runs once per step as a batched product.
#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "core/parallel.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace dsv3 {

MlpBatch::MlpBatch(int64_t max_jobs, int64_t max_rows, int64_t max_intermediate, int64_t hidden)
    : D_(hidden), hidden_(static_cast<size_t>(max_rows * 2 * max_intermediate)) {
  jobs_.reserve(static_cast<size_t>(max_jobs));
}

void MlpBatch::Add(const MlpWeights& w, const float* x, int64_t n, float* out) {
  if (jobs_.empty()) hidden_used_ = 0;
  jobs_.push_back({&w, x, n, out, hidden_.data() + hidden_used_});
  hidden_used_ += n * 2 * w.gate.rows;
}

namespace {
// The rows of all jobs laid end to end, job j's rows each costing cost(j) (its tokens plus a fixed
// share for reading and converting the row), split into one contiguous range of nearly equal cost
// per thread; f(job, r0, r1) gets the thread's rows of each job. Boundaries are rounded to 16 rows
// (whole tiles); a row's result does not depend on where the split falls.
template <typename Job, typename Rows, typename Cost, typename F>
void ParallelRows(const std::vector<Job>& jobs, Rows rows, Cost cost, F&& f) {
  int64_t total = 0;
  for (const Job& j : jobs) total += rows(j) * cost(j);
  ParallelFor(total, 1, [&](int64_t b, int64_t e, int) {
    int64_t base = 0;
    for (const Job& j : jobs) {
      const int64_t R = rows(j), c = cost(j);
      auto row_at = [&](int64_t pos) {  // the first row starting at or after cost `pos`
        const int64_t r = std::clamp<int64_t>((pos - base + c - 1) / c, 0, R);
        return std::min(R, (r + 15) / 16 * 16);
      };
      const int64_t r0 = row_at(b), r1 = row_at(e);
      base += R * c;
      if (r0 < r1) f(j, r0, r1);
    }
  });
}
constexpr int64_t kRowCost = 16;  // converting a weight row costs about as much as 16 tokens' FMAs
}  // namespace

void MlpBatch::Run(const kernels::MatMulOptions& mm) {
  auto cost = [](const Job& j) { return j.n + kRowCost; };
  // Phase 1: rows [0, 2I) of each job: gate rows, then up rows, into hidden [n, 2I].
  ParallelRows(
      jobs_, [](const Job& j) { return 2 * j.w->gate.rows; }, cost,
      [&](const Job& j, int64_t r0, int64_t r1) {
        const int64_t I = j.w->gate.rows;
        if (r0 < I)
          kernels::MatMulRows(j.w->gate, r0, std::min(r1, I), j.x, D_, j.n, j.hidden + r0, 2 * I,
                              mm);
        if (r1 > I) {
          const int64_t u0 = std::max(r0, I) - I;
          kernels::MatMulRows(j.w->up, u0, r1 - I, j.x, D_, j.n, j.hidden + I + u0, 2 * I, mm);
        }
      });
  for (const Job& j : jobs_) {
    const int64_t I = j.w->gate.rows;
    for (int64_t t = 0; t < j.n; ++t) {
      float* h = j.hidden + t * 2 * I;
      kernels::SiluMul(h, h + I, h, I);
    }
  }
  // Phase 2: the D rows of each job's down projection.
  ParallelRows(
      jobs_, [&](const Job&) { return D_; }, cost,
      [&](const Job& j, int64_t r0, int64_t r1) {
        kernels::MatMulRows(j.w->down, r0, r1, j.hidden, 2 * j.w->gate.rows, j.n, j.out + r0, D_,
                            mm);
      });
  jobs_.clear();
}

RouterScratch::RouterScratch(const Config& c)
    : scores(c.n_routed_experts),
      choice(c.n_routed_experts),
      group_score(c.n_group),
      kept_groups(c.topk_group) {}

void RouteToken(const Config& c, const float* logits, const float* bias, RouterScratch& scratch,
                int32_t* indices, float* weights) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  float* scores = scratch.scores.data();  // unbiased affinities: the weights come from these
  float* choice = scratch.choice.data();  // what selection ranks: scores + bias, groups masked
  if (c.scoring_func == ScoringFunc::kSigmoid) {
    for (int64_t e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  } else {
    std::memcpy(scores, logits, E * sizeof(float));
    kernels::Softmax(scores, E);
  }
  // The load-balancing bias (noaux_tc) steers selection only; it never enters the weights.
  for (int64_t e = 0; e < E; ++e) choice[e] = bias ? scores[e] + bias[e] : scores[e];

  if (c.topk_method != TopkMethod::kGreedy && c.n_group > 1) {
    // Group-limited routing: rank groups (noaux_tc: sum of the group's top 2 choice scores;
    // group_limited_greedy: its max), keep topk_group groups, exclude the other groups' experts.
    const int64_t G = c.n_group, per_group = E / G;
    float* gs = scratch.group_score.data();
    for (int64_t g = 0; g < G; ++g) {
      const float* s = choice + g * per_group;
      if (c.topk_method == TopkMethod::kNoauxTc) {
        int32_t top2[2];
        kernels::TopK(s, per_group, 2, top2);
        gs[g] = s[top2[0]] + s[top2[1]];
      } else {
        gs[g] = *std::max_element(s, s + per_group);
      }
    }
    int32_t* keep = scratch.kept_groups.data();
    kernels::TopK(gs, G, c.topk_group, keep);
    for (int64_t g = 0; g < G; ++g) {
      if (std::find(keep, keep + c.topk_group, g) == keep + c.topk_group) {
        std::fill(choice + g * per_group, choice + (g + 1) * per_group,
                  -std::numeric_limits<float>::infinity());
      }
    }
  }
  kernels::TopK(choice, E, K, indices);
  float sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += weights[k] = scores[indices[k]];
  const float scale = static_cast<float>(c.routed_scaling_factor);
  const float norm = c.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
  for (int64_t k = 0; k < K; ++k) weights[k] = weights[k] * norm * scale;
}

Moe::Moe(const Config& c, int64_t max_batch, ProcessGroup* group)
    : c_(c),
      group_(group),
      mlps_(c.n_routed_experts + 1, max_batch * (c.num_experts_per_tok + 1),
            std::max(c.moe_intermediate_size, c.shared_intermediate()), c.hidden_size),
      logits_(max_batch * c.n_routed_experts),
      router_scratch_(c),
      indices_(max_batch * c.num_experts_per_tok),
      weights_(max_batch * c.num_experts_per_tok),
      count_(c.n_routed_experts),
      first_(c.n_routed_experts + 1),
      slot_token_(max_batch * c.num_experts_per_tok),
      slot_weight_(max_batch * c.num_experts_per_tok),
      gathered_(max_batch * c.num_experts_per_tok * c.hidden_size),
      expert_out_(max_batch * c.num_experts_per_tok * c.hidden_size),
      shared_out_(max_batch * c.hidden_size) {}

size_t Moe::scratch_bytes() const {
  return mlps_.scratch_bytes() +
         sizeof(float) *
             (logits_.size() + gathered_.size() + expert_out_.size() + shared_out_.size() +
              weights_.size() + slot_weight_.size() + router_scratch_.scores.size() * 2) +
         sizeof(int32_t) * (indices_.size() + count_.size() + first_.size() + slot_token_.size());
}

void Moe::Route(const ForwardStep& step, const MoeWeights& w, int64_t layer, const float* xn) {
  const int64_t T = step.T, D = c_.hidden_size, E = c_.n_routed_experts, K = c_.num_experts_per_tok;
  PhaseTimer timer(profile_, Phase::kRouter);
  // Router in float32: [T, E].
  kernels::MatMul(w.router, xn, D, T, logits_.data(), E, step.matmul);
  const float* bias = w.correction_bias.empty() ? nullptr : w.correction_bias.data();
  for (int64_t t = 0; t < T; ++t) {
    RouteToken(c_, logits_.data() + t * E, bias, router_scratch_, indices_.data() + t * K,
               weights_.data() + t * K);
  }
  if (step.trace) {
    ForwardTrace::Routing& r = step.trace->RoutingFor(layer);
    r.indices.insert(r.indices.end(), indices_.begin(), indices_.begin() + T * K);
    r.weights.insert(r.weights.end(), weights_.begin(), weights_.begin() + T * K);
  }
}

void Moe::Forward(const ForwardStep& step, const MoeWeights& w, int64_t layer, const float* xn,
                  float* out) {
  const int64_t T = step.T, D = c_.hidden_size, E = c_.n_routed_experts, K = c_.num_experts_per_tok;
  if (T > 0) Route(step, w, layer, xn);
  if (group_ != nullptr) {
    // Routed experts wherever they are held (every rank takes part, with T = 0 too); then the
    // shared experts on this rank, added last as below.
    {
      PhaseTimer timer(profile_, Phase::kExperts);
      group_->RoutedExperts(step.matmul, w, layer, T, xn, indices_.data(), weights_.data(), out);
    }
    if (T > 0 && c_.n_shared_experts > 0) {
      PhaseTimer timer(profile_, Phase::kExperts);
      mlps_.Forward(w.shared, xn, T, shared_out_.data(), step.matmul);
      kernels::Add(shared_out_.data(), out, T * D);
    }
    return;
  }
  std::optional<PhaseTimer> timer;

  // Group (token, weight) slots by expert: counting sort, tokens ascending within an expert.
  std::fill(count_.begin(), count_.end(), 0);
  for (int64_t i = 0; i < T * K; ++i) ++count_[indices_[i]];
  first_[0] = 0;
  for (int64_t e = 0; e < E; ++e) first_[e + 1] = first_[e] + count_[e];
  std::fill(count_.begin(), count_.end(), 0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = indices_[t * K + k];
      const int32_t slot = first_[e] + count_[e]++;
      slot_token_[slot] = static_cast<int32_t>(t);
      slot_weight_[slot] = weights_[t * K + k];
    }
  }

  // Selected experts (each on its gathered tokens) and the shared experts, as one batch.
  timer.emplace(profile_, Phase::kExperts);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = first_[e + 1] - first_[e];
    if (n == 0) continue;  // never read an unselected expert's weights
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(gathered_.data() + (first_[e] + j) * D, xn + slot_token_[first_[e] + j] * D,
                  D * sizeof(float));
    }
    mlps_.Add(w.experts[e], gathered_.data() + first_[e] * D, n,
              expert_out_.data() + first_[e] * D);
  }
  if (c_.n_shared_experts > 0) mlps_.Add(w.shared, xn, T, shared_out_.data());
  mlps_.Run(step.matmul);

  // out[t] = sum over t's slots of weight * expert output (experts in index order), + shared.
  std::fill(out, out + T * D, 0.0f);
  for (int64_t slot = 0; slot < T * K; ++slot) {
    kernels::Axpy(slot_weight_[slot], expert_out_.data() + slot * D, out + slot_token_[slot] * D,
                  D);
  }
  if (c_.n_shared_experts > 0) kernels::Add(shared_out_.data(), out, T * D);
}

}  // namespace dsv3
