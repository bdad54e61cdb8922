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
      draft_probs_(std::max<int64_t>(draft, 1) * model.config().vocab_size),
      target_probs_(model.config().vocab_size) {
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
  const int64_t D = c_.hidden_size, V = c_.vocab_size, P = static_cast<int64_t>(prompt.size());
  if (P == 0) Fail("the prompt is empty: give at least one token");
  const int64_t n_new = options.max_new_tokens;
  if (ctx.n_past() + P + std::max<int64_t>(n_new - 1, 0) > ctx.capacity()) {
    Fail("prompt ({} tokens) plus {} new tokens exceed the context size of {} (raise --ctx-size)",
         P, n_new, ctx.capacity());
  }
  Sampler sampler(options.sampling, V);
  GenerateStats s;
  s.prompt_tokens = P;
  s.drafts_checked.assign(static_cast<size_t>(draft_), 0);
  s.drafts_accepted.assign(static_cast<size_t>(draft_), 0);
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(n_new, 0)));
  auto is_eos = [&](int32_t t) {
    return options.stop_at_eos &&
           std::find(c_.eos_token_ids.begin(), c_.eos_token_ids.end(), t) != c_.eos_token_ids.end();
  };

  // The prompt, chunk by chunk as the main context would take it, keeping each position's
  // hidden state; MTP slots run once their next token is known.
  auto t0 = Clock::now();
  for (int64_t i = 0; i < P; i += max_batch_) {
    const int64_t nb = std::min(max_batch_, P - i), at = ctx.n_past();
    std::copy_n(prompt.data() + i, nb, tokens_.begin() + at);
    ctx.Forward(prompt.subspan(i, nb),
                {.hidden = std::span<float>(hidden_.data() + at * D, nb * D)});
    known_ = ctx.n_past();
    RunSlots(ctx.n_past() - 1);
  }
  s.prefill_seconds = Since(t0);

  t0 = Clock::now();
  bool stop = n_new <= 0;
  int32_t token = -1;  // the newest token, not yet fed to the main model
  if (!stop) {
    token = sampler.Sample(ctx.last_logits());
    out.push_back(token);
    stop = (on_token && !on_token(token)) || is_eos(token) || n_new == 1;
  }
  int32_t drafts[kMaxDraft + 1];
  int32_t fed[kMaxDraft + 1];
  while (!stop) {
    const int64_t n = ctx.n_past();
    tokens_[n] = token;  // the next token of slot n - 1
    RunSlots(n);
    // Drafts: slot n - 1 predicts the token after `token`; further drafts chain the module on
    // its own output in slots beyond the verified ones (dropped after the step).
    const int64_t remaining = n_new - static_cast<int64_t>(out.size());
    const int64_t k =
        std::max<int64_t>(0, std::min({draft_, remaining - 1, ctx.capacity() - n - 1}));
    for (int64_t j = 0; j < k; ++j) {
      if (j > 0) {
        mtp_.Forward(y_.data(), D, std::span<const int32_t>(&drafts[j - 1], 1),
                     {.hidden = std::span<float>(y_.data(), D)});
      }
      if (sampler.greedy()) {
        drafts[j] = Argmax(mtp_.last_logits(), V);
      } else {
        float* q = draft_probs_.data() + j * V;
        sampler.Probabilities(mtp_.last_logits(), q);
        drafts[j] = sampler.Draw(q);
      }
    }
    mtp_.Truncate(n);

    // Verify the newest token plus the drafts in one pass (fewer than kGemmMinTokens tokens, so
    // each position computes exactly as it would alone).
    fed[0] = token;
    std::copy_n(drafts, k, fed + 1);
    ctx.Forward(std::span<const int32_t>(fed, k + 1),
                {.logits = std::span<float>(verify_logits_.data(), (k + 1) * V),
                 .hidden = std::span<float>(hidden_.data() + n * D, (k + 1) * D)});
    ++s.decode_steps;
    int64_t accepted = 0;
    int32_t next = -1;
    for (int64_t j = 0; j < k && next < 0; ++j) {
      const float* logits = verify_logits_.data() + j * V;  // predicts the token after fed[j]
      ++s.drafts_checked[j];
      bool ok;
      if (sampler.greedy()) {
        const int32_t target = Argmax(logits, V);
        ok = target == drafts[j];
        if (!ok) next = target;
      } else {
        float* p = target_probs_.data();
        const float* q = draft_probs_.data() + j * V;
        sampler.Probabilities(logits, p);
        const int32_t d = drafts[j];
        ok = sampler.Uniform() * q[d] < p[d];  // probability min(1, p/q)
        if (!ok) {
          for (int64_t v = 0; v < V; ++v) p[v] = std::max(0.0f, p[v] - q[v]);  // the residual
          next = sampler.Draw(p);
        }
      }
      if (ok) {
        ++accepted;
        ++s.drafts_accepted[j];
      }
    }
    if (next < 0) next = sampler.Sample(verify_logits_.data() + k * V);  // all accepted: a bonus

    // New tokens: the accepted drafts, then `next`; the last one emitted is not fed back, so
    // the main cache keeps positions n .. n + emitted - 1.
    drafts[accepted] = next;
    int64_t emitted = 0;
    while (emitted <= accepted && !stop) {
      const int32_t t = drafts[emitted++];
      out.push_back(t);
      stop = (on_token && !on_token(t)) || is_eos(t) || static_cast<int64_t>(out.size()) >= n_new;
    }
    ctx.Truncate(n + emitted);
    std::copy_n(fed, emitted, tokens_.begin() + n);
    known_ = n + emitted;
    s.decode_tokens += emitted;
    token = drafts[emitted - 1];
  }
  s.decode_seconds = Since(t0);
  s.new_tokens = static_cast<int64_t>(out.size());
  if (stats) *stats = s;
  return out;
}

}  // namespace dsv3
