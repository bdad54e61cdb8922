#include "runtime/speculative.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/error.h"

namespace dsv3 {
namespace {
using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

SpeculativeDecoder::SpeculativeDecoder(const Model& model, const ContextOptions& o, int64_t draft)
    : model_(model),
      c_(model.config()),
      draft_(draft),
      max_batch_(std::max<int64_t>(1, std::min(o.max_batch, o.capacity))),
      mtp_(model, 0, o),
      hidden_(o.capacity * model.config().hidden_size, /*zero=*/false),
      tokens_(static_cast<size_t>(o.capacity + 1), -1),
      y_(model.config().hidden_size),
      slot_out_(max_batch_ * model.config().hidden_size),
      verify_logits_((draft + 1) * model.config().vocab_size),
      draft_probs_(std::max<int64_t>(draft, 1) * model.config().vocab_size) {
  if (model.mtp().empty()) Fail("this checkpoint has no MTP module to draft with");
  if (draft < 1 || draft > kMaxDraft) {
    Fail("--draft must be between 1 and {}, got {}", kMaxDraft, draft);
  }
}

bool SpeculativeDecoder::InSync(const Context& ctx) const {
  return known_ >= ctx.n_past() && mtp_.n_past() <= ctx.n_past() &&
         ctx.capacity() <= mtp_.capacity();
}

void SpeculativeDecoder::Truncate(int64_t n) {
  known_ = std::min(known_, n);
  mtp_.Truncate(std::max<int64_t>(0, n - 1));  // slot i needs position i + 1
}

void SpeculativeDecoder::RunSlots(int64_t until) {
  const int64_t D = c_.hidden_size;
  while (mtp_.n_past() < until) {
    const int64_t i = mtp_.n_past(), n = std::min(max_batch_, until - i);
    mtp_.Forward(hidden_.data() + i * D, D, std::span<const int32_t>(tokens_.data() + i + 1, n),
                 {.hidden = std::span<float>(slot_out_.data(), n * D)});
    std::memcpy(y_.data(), slot_out_.data() + (n - 1) * D, D * sizeof(float));
  }
}

std::vector<int32_t> SpeculativeDecoder::Generate(Context& ctx, std::span<const int32_t> prompt,
                                                  const GenerateOptions& options,
                                                  GenerateStats* stats,
                                                  const std::function<bool(int32_t)>& on_token) {
  GenerationState g(ctx, prompt, options, on_token);
  GenerateStats& s = g.stats;
  s.drafts_checked.assign(static_cast<size_t>(draft_), 0);
  s.drafts_accepted.assign(static_cast<size_t>(draft_), 0);
  const int64_t n_new = options.max_new_tokens;

  auto t0 = Clock::now();
  Prefill(ctx, prompt);
  s.prefill_seconds = Since(t0);

  t0 = Clock::now();
  int32_t token = -1;  // the newest token, not yet fed to the main model
  bool stop = n_new <= 0 || g.Emit(token = g.sampler.Sample(ctx.last_logits()));
  while (!stop) {
    const int64_t n = ctx.n_past(), remaining = n_new - static_cast<int64_t>(g.out.size());
    const int64_t k =
        std::max<int64_t>(0, std::min({draft_, remaining - 1, ctx.capacity() - n - 1}));
    Draft(ctx, token, k, g.sampler);
    int32_t next = -1;
    const int64_t accepted = Verify(ctx, token, k, g.sampler, s, &next);
    stop = Emit(ctx, n, accepted, next, g, &token);
  }
  s.decode_seconds = Since(t0);
  if (stats) *stats = g.Finish();
  return std::move(g.out);
}

void SpeculativeDecoder::Prefill(Context& ctx, std::span<const int32_t> prompt) {
  const int64_t D = c_.hidden_size, P = static_cast<int64_t>(prompt.size());
  for (int64_t i = 0; i < P; i += max_batch_) {
    const int64_t nb = std::min(max_batch_, P - i), at = ctx.n_past();
    std::copy_n(prompt.data() + i, nb, tokens_.begin() + at);
    ctx.Forward(prompt.subspan(i, nb),
                {.hidden = std::span<float>(hidden_.data() + at * D, nb * D)});
    known_ = ctx.n_past();
    RunSlots(ctx.n_past() - 1);
  }
}

void SpeculativeDecoder::Draft(const Context& ctx, int32_t token, int64_t k, Sampler& sampler) {
  const int64_t D = c_.hidden_size, V = c_.vocab_size, n = ctx.n_past();
  tokens_[n] = token;  // the next token of slot n - 1
  RunSlots(n);
  for (int64_t j = 0; j < k; ++j) {
    if (j > 0) {
      mtp_.Forward(y_.data(), D, std::span<const int32_t>(&drafts_[j - 1], 1),
                   {.hidden = std::span<float>(y_.data(), D)});
    }
    drafts_[j] = sampler.Draft(mtp_.last_logits(), draft_probs_.data() + j * V);
  }
  mtp_.Truncate(n);
}

int64_t SpeculativeDecoder::Verify(Context& ctx, int32_t token, int64_t k, Sampler& sampler,
                                   GenerateStats& s, int32_t* next) {
  const int64_t D = c_.hidden_size, V = c_.vocab_size, n = ctx.n_past();
  // Fewer than kGemmMinTokens tokens, so each position computes exactly as it would alone.
  fed_[0] = token;
  std::copy_n(drafts_, k, fed_ + 1);
  ctx.Forward(std::span<const int32_t>(fed_, k + 1),
              {.logits = std::span<float>(verify_logits_.data(), (k + 1) * V),
               .hidden = std::span<float>(hidden_.data() + n * D, (k + 1) * D)});
  ++s.decode_steps;
  int64_t accepted = 0;
  for (; accepted < k; ++accepted) {
    const int64_t j = accepted;  // logits row j predicts the token after fed_[j]
    ++s.drafts_checked[j];
    if (!sampler.Verify(verify_logits_.data() + j * V, drafts_[j], draft_probs_.data() + j * V,
                        next)) {
      return accepted;
    }
    ++s.drafts_accepted[j];
  }
  *next = sampler.Sample(verify_logits_.data() + k * V);  // all accepted: a bonus token
  return accepted;
}

bool SpeculativeDecoder::Emit(Context& ctx, int64_t n, int64_t accepted, int32_t next,
                              GenerationState& g, int32_t* token) {
  drafts_[accepted] = next;
  int64_t emitted = 0;
  bool stop = false;
  while (emitted <= accepted && !stop) stop = g.Emit(drafts_[emitted++]);
  ctx.Truncate(n + emitted);
  std::copy_n(fed_, emitted, tokens_.begin() + n);
  known_ = n + emitted;
  g.stats.decode_tokens += emitted;
  *token = drafts_[emitted - 1];
  return stop;
}

}  // namespace dsv3
