#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "runtime/speculative.h"

namespace dsv3 {

std::vector<int32_t> Generate(Context& ctx, std::span<const int32_t> prompt,
                              const GenerateOptions& options, GenerateStats* stats,
                              const std::function<bool(int32_t)>& on_token,
                              SpeculativeDecoder* speculative) {
  if (speculative != nullptr && speculative->InSync(ctx)) {
    return speculative->Generate(ctx, prompt, options, stats, on_token);
  }
  using Clock = std::chrono::steady_clock;
  const Config& c = ctx.model().config();
  if (prompt.empty()) Fail("the prompt is empty: give at least one token");
  const int64_t n = options.max_new_tokens;
  if (ctx.n_past() + static_cast<int64_t>(prompt.size()) + std::max<int64_t>(n - 1, 0) >
      ctx.capacity()) {
    Fail("prompt ({} tokens) plus {} new tokens exceed the context size of {} (raise --ctx-size)",
         prompt.size(), n, ctx.capacity());
  }
  Sampler sampler(options.sampling, c.vocab_size);
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(n, 0)));
  GenerateStats s;
  s.prompt_tokens = static_cast<int64_t>(prompt.size());

  auto t0 = Clock::now();
  ctx.Forward(prompt);
  s.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  t0 = Clock::now();
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) {
      const int32_t last = out.back();
      ctx.Forward(std::span<const int32_t>(&last, 1));
      ++s.decode_steps;
    }
    const int32_t token = sampler.Sample(ctx.last_logits());
    out.push_back(token);
    if (on_token && !on_token(token)) break;
    if (options.stop_at_eos &&
        std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), token) != c.eos_token_ids.end()) {
      break;
    }
  }
  s.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  s.new_tokens = static_cast<int64_t>(out.size());
  s.decode_tokens = s.decode_steps;
  if (stats) *stats = s;
  return out;
}

}  // namespace dsv3
