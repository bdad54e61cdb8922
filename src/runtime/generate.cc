#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "runtime/speculative.h"

namespace dsv3 {

GenerationState::GenerationState(const Context& ctx, std::span<const int32_t> prompt,
                                 const GenerateOptions& options,
                                 const std::function<bool(int32_t)>& on_token)
    : sampler(options.sampling, ctx.model().config().vocab_size),
      c_(ctx.model().config()),
      options_(options),
      on_token_(on_token) {
  if (prompt.empty()) Fail("the prompt is empty: give at least one token");
  const int64_t n = options.max_new_tokens;
  if (ctx.n_past() + static_cast<int64_t>(prompt.size()) + std::max<int64_t>(n - 1, 0) >
      ctx.capacity()) {
    Fail("prompt ({} tokens) plus {} new tokens exceed the context size of {} (raise --ctx-size)",
         prompt.size(), n, ctx.capacity());
  }
  out.reserve(static_cast<size_t>(std::max<int64_t>(n, 0)));
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
}

bool GenerationState::Emit(int32_t token) {
  out.push_back(token);
  if (on_token_ && !on_token_(token)) return true;
  const auto& eos = c_.eos_token_ids;
  if (options_.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) return true;
  return static_cast<int64_t>(out.size()) >= options_.max_new_tokens;
}

const GenerateStats& GenerationState::Finish() {
  stats.new_tokens = static_cast<int64_t>(out.size());
  return stats;
}

std::vector<int32_t> Generate(Context& ctx, std::span<const int32_t> prompt,
                              const GenerateOptions& options, GenerateStats* stats,
                              const std::function<bool(int32_t)>& on_token,
                              SpeculativeDecoder* speculative) {
  if (speculative != nullptr && speculative->InSync(ctx)) {
    return speculative->Generate(ctx, prompt, options, stats, on_token);
  }
  using Clock = std::chrono::steady_clock;
  GenerationState g(ctx, prompt, options, on_token);
  GenerateStats& s = g.stats;

  auto t0 = Clock::now();
  ctx.Forward(prompt);
  s.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  t0 = Clock::now();
  bool stop = options.max_new_tokens <= 0;
  while (!stop) {
    if (!g.out.empty()) {
      const int32_t last = g.out.back();
      ctx.Forward(std::span<const int32_t>(&last, 1));
      ++s.decode_steps;
    }
    stop = g.Emit(g.sampler.Sample(ctx.last_logits()));
  }
  s.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  s.decode_tokens = s.decode_steps;
  if (stats) *stats = g.Finish();
  return std::move(g.out);
}

}  // namespace dsv3
