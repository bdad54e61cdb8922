#include "train/optimizer.h"

#include <cmath>

#include "core/parallel.h"

namespace dsv3::train {

AdamW::AdamW(const Params& params, const AdamWOptions& options)
    : o_(options), list_(params.list()), m_(params.buffer_size()), v_(params.buffer_size()) {}

double GradNorm(const Params& params) {
  double ss = 0;
  for (const ParamInfo& p : params.list()) {
    const float* g = params.grads() + p.offset;
    for (int64_t i = 0; i < p.numel; ++i) ss += static_cast<double>(g[i]) * g[i];
  }
  return std::sqrt(ss);
}

double AdamW::Step(Params& params, double lr) {
  ++t_;
  const double norm = GradNorm(params);
  const float gscale =
      o_.clip_norm > 0 && norm > o_.clip_norm ? static_cast<float>(o_.clip_norm / norm) : 1.0f;
  const float b1 = static_cast<float>(o_.beta1), b2 = static_cast<float>(o_.beta2);
  const float step_size = static_cast<float>(lr / (1 - std::pow(o_.beta1, t_)));
  const float bc2 = static_cast<float>(std::sqrt(1 - std::pow(o_.beta2, t_)));
  const float eps = static_cast<float>(o_.eps);
  float* values = params.values();
  const float* grads = params.grads();
  for (const ParamInfo& p : list_) {
    const float decay = p.weight_decay ? static_cast<float>(1 - lr * o_.weight_decay) : 1.0f;
    float* w = values + p.offset;
    float* m = m_.data() + p.offset;
    float* v = v_.data() + p.offset;
    const float* g = grads + p.offset;
    ParallelFor(p.numel, 1024, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) {
        const float gi = g[i] * gscale;
        w[i] *= decay;
        m[i] = b1 * m[i] + (1 - b1) * gi;
        v[i] = b2 * v[i] + (1 - b2) * gi * gi;
        w[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2 + eps);
      }
    });
  }
  return norm;
}

void UpdateRoutingBiases(Params& params, const std::vector<MoeLayerStats>& stats, float gamma) {
  for (const MoeLayerStats& s : stats) {
    if (s.bias_name.empty()) continue;
    std::vector<float>& b = *params.bias(s.bias_name);
    double mean = 0;
    for (int64_t l : s.load) mean += static_cast<double>(l);
    mean /= static_cast<double>(s.load.size());
    for (size_t j = 0; j < b.size(); ++j) {
      const double err = mean - static_cast<double>(s.load[j]);
      const float sign = err > 0 ? 1.0f : (err < 0 ? -1.0f : 0.0f);
      b[j] = b[j] + gamma * sign;
    }
  }
}

}  // namespace dsv3::train
