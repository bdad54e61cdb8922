// Next-token choice from logits: greedy (temperature 0, ties to the lower id) or sampling with
// temperature, top-k and top-p from a seeded generator (same seed, same tokens).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace dsv3 {

struct SamplingParams {
  float temperature = 0;  // 0: greedy
  float top_p = 1;        // (0, 1]
  int64_t top_k = 0;      // 0: all
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, int64_t vocab);
  int32_t Sample(const float* logits);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  int64_t vocab_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // [vocab], allocated once
};

// Index of the largest value; ties go to the lower index.
int32_t Argmax(const float* values, int64_t n);

}  // namespace dsv3
