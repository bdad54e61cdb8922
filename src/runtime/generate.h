// The generation loop: prefill the prompt in one pass, then decode one token at a time through
// the latent cache, with timing. Nothing is allocated inside the decode loop.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"
#include "runtime/sampler.h"

namespace dsv3 {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  int64_t decode_steps = 0;  // forward passes of one token
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
  }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? decode_steps / decode_seconds : 0;
  }
};

// Appends the prompt to `ctx` and generates after it. `on_token` sees each new token as it is
// chosen and may return false to stop. Returns the new tokens.
std::vector<int32_t> Generate(Context& ctx, std::span<const int32_t> prompt,
                              const GenerateOptions& options, GenerateStats* stats = nullptr,
                              const std::function<bool(int32_t)>& on_token = {});

}  // namespace dsv3
