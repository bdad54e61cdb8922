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
  int64_t decode_steps = 0;   // main-model forward passes after the prompt
  int64_t decode_tokens = 0;  // tokens those passes produced (the first comes from the prompt's)
  double prefill_seconds = 0;
  double decode_seconds = 0;
  // Speculative decoding: per draft position j, drafts checked and accepted (a draft is checked
  // only when every earlier one of its step was accepted).
  std::vector<int64_t> drafts_checked, drafts_accepted;
  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
  }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? decode_tokens / decode_seconds : 0;
  }
  double tokens_per_step() const {
    return decode_steps > 0 ? static_cast<double>(decode_tokens) / decode_steps : 0;
  }
  double acceptance(size_t j) const {
    return j < drafts_checked.size() && drafts_checked[j] > 0
               ? static_cast<double>(drafts_accepted[j]) / drafts_checked[j]
               : 0;
  }
};

class SpeculativeDecoder;

// What the plain and the speculative decoding loops share: the request checked against the
// context before any work (dsv3::Error for an empty prompt, or a prompt plus new tokens beyond
// the context), the sampler, the output and the statistics, and the emission of each new token.
class GenerationState {
 public:
  GenerationState(const Context& ctx, std::span<const int32_t> prompt,
                  const GenerateOptions& options, const std::function<bool(int32_t)>& on_token);
  // Appends `token`; true when generation stops after it: on_token declined it, it is an EOS
  // token (unless ignored), or max_new_tokens are out.
  bool Emit(int32_t token);
  // The statistics, with new_tokens filled in.
  const GenerateStats& Finish();

  Sampler sampler;
  std::vector<int32_t> out;
  GenerateStats stats;

 private:
  const Config& c_;
  const GenerateOptions& options_;
  const std::function<bool(int32_t)>& on_token_;
};

// Appends the prompt to `ctx` and generates after it. `on_token` sees each new token as it is
// chosen and may return false to stop. Returns the new tokens. With `speculative` (built for the
// same model and context size), decoding drafts tokens with the MTP module and verifies them in
// one main-model pass per step: greedy output is identical, sampled output has the same
// distribution. The last generated token is never fed back (as in plain decoding).
std::vector<int32_t> Generate(Context& ctx, std::span<const int32_t> prompt,
                              const GenerateOptions& options, GenerateStats* stats = nullptr,
                              const std::function<bool(int32_t)>& on_token = {},
                              SpeculativeDecoder* speculative = nullptr);

}  // namespace dsv3
