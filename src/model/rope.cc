#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace dsv3 {

double YarnMscale(double factor, double mscale) {
  return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

RopeTable ComputeRope(const Config& c) {
  const int64_t R = c.qk_rope_head_dim;
  const double theta = c.rope_theta;
  RopeTable t;
  t.inv_freq.resize(static_cast<size_t>(R / 2));
  t.softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.qk_head_dim())));
  for (int64_t i = 0; i < R / 2; ++i) {
    t.inv_freq[i] = static_cast<float>(std::pow(theta, -2.0 * i / R));
  }
  if (!c.rope_scaling) return t;

  // YaRN: dimensions that rotate fewer than beta_slow times over the original context are
  // interpolated (freq / factor), those rotating more than beta_fast times are kept, with a
  // linear ramp in between.
  const YarnScaling& y = *c.rope_scaling;
  const double orig = static_cast<double>(y.original_max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return R * std::log(orig / (rotations * 2 * M_PI)) / (2 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(y.beta_slow)), static_cast<double>(R - 1));
  if (high == low) high += 0.001;
  for (int64_t i = 0; i < R / 2; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double f = t.inv_freq[i];
    t.inv_freq[i] = static_cast<float>(f / y.factor * ramp + f * (1 - ramp));
  }
  t.cos_sin_scale =
      static_cast<float>(YarnMscale(y.factor, y.mscale) / YarnMscale(y.factor, y.mscale_all_dim));
  // Forgetting this m^2 changes logits by several units (see deepseek-architecture.md).
  if (y.mscale_all_dim != 0) {
    const double m = YarnMscale(y.factor, y.mscale_all_dim);
    t.softmax_scale = static_cast<float>(t.softmax_scale * m * m);
  }
  return t;
}

void RopeTable::Angles(int64_t pos, float* cos, float* sin) const {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float angle = static_cast<float>(pos) * inv_freq[i];
    cos[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * cos_sin_scale;
    sin[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * cos_sin_scale;
  }
}

}  // namespace dsv3
