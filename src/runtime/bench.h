// End-to-end speed measurement of a model: prompt prefill, decode, the weight bytes a decoded token
// reads against the machine's measured memory read bandwidth, decode at a long context, and where
// the time goes.
#pragma once

#include <cstdint>

#include "core/json.h"
#include "model/model.h"
#include "model/profile.h"

namespace dsv3 {

struct BenchOptions {
  int64_t prompt_tokens = 512;
  int64_t decode_tokens = 128;
  int64_t context = 0;  // > 0: also decode after this many (random) cached tokens
  uint64_t seed = 0;
  size_t bandwidth_bytes = size_t{1} << 30;  // STREAM buffer
};

struct DecodeRun {
  int64_t context = 0;  // tokens in the cache when decoding started
  int64_t steps = 0;
  double seconds = 0;
  ForwardProfile profile;  // summed over the steps
  double tokens_per_second() const { return seconds > 0 ? steps / seconds : 0; }
  double attention_fraction() const {
    return seconds > 0 ? profile[Phase::kAttnCore] / seconds : 0;
  }
};

struct BenchResult {
  int threads = 0;
  std::string kernels;
  double prefault_seconds = 0;  // paging the weights in before measuring
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  ForwardProfile prefill_profile;
  DecodeRun decode;       // right after the prompt
  DecodeRun long_decode;  // after options.context cached tokens (steps == 0 when not asked)
  uint64_t weight_bytes_per_token = 0;
  double read_bandwidth_gbs = 0;
  int64_t kv_bytes_per_token = 0;
  size_t scratch_bytes = 0;
  int64_t peak_rss_bytes = 0;

  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
  }
  // Weight bytes per second the decode achieved, in GB/s.
  double effective_gbs() const { return weight_bytes_per_token * decode.tokens_per_second() / 1e9; }
  Json ToJson() const;
};

BenchResult RunBench(const Model& model, const BenchOptions& options);

}  // namespace dsv3
