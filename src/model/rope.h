// Decoupled RoPE frequencies with YaRN, and the attention softmax scale that goes with them.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace dsv3 {

struct RopeTable {
  std::vector<float> inv_freq;  // [R/2], after YaRN
  float cos_sin_scale = 1;      // YaRN m(mscale) / m(mscale_all_dim); 1 in published configs
  float softmax_scale = 0;      // (N+R)^-0.5, times m(mscale_all_dim)^2 under YaRN

  // cos/sin of pos * inv_freq[i] for i < R/2, as float32 like the reference (angle rounded to
  // float32 first), times cos_sin_scale.
  void Angles(int64_t pos, float* cos, float* sin) const;
};

RopeTable ComputeRope(const Config& c);
// YaRN's attention temperature m = 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1).
double YarnMscale(double factor, double mscale);

}  // namespace dsv3
