// Self-speculative decoding with the model's MTP module: each step drafts `draft` tokens (the
// MTP module chained on its own output after the first), the main model checks the last
// accepted token plus the drafts in one forward pass, and rejected positions are rolled back by
// truncating the latent caches. Greedy: a draft is kept when it equals the main model's choice.
// Sampling: standard speculative sampling (accept with probability min(1, p/q), else resample
// from max(0, p - q)), so tokens follow exactly the plain sampler's distribution.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/aligned.h"
#include "model/model.h"
#include "model/mtp.h"
#include "runtime/generate.h"

namespace dsv3 {

inline constexpr int64_t kMaxDraft = 6;  // verification passes stay below the GEMM batch size

class SpeculativeDecoder {
 public:
  // `options` must be the main Context's; needs model.mtp() non-empty and 1 <= draft <= kMaxDraft.
  SpeculativeDecoder(const Model& model, const ContextOptions& options, int64_t draft);

  int64_t draft() const { return draft_; }
  // True when this decoder has seen every position `ctx` holds (it must run all of them).
  bool InSync(const Context& ctx) const;
  // Follows ctx.Truncate(n): MTP slots whose next token is gone are dropped.
  void Truncate(int64_t n);
  std::vector<int32_t> Generate(Context& ctx, std::span<const int32_t> prompt,
                                const GenerateOptions& options, GenerateStats* stats,
                                const std::function<bool(int32_t)>& on_token);
  const KvCache& mtp_cache() const { return mtp_.cache(); }

 private:
  // Runs MTP slots mtp_.n_past() .. until - 1 (slot i: hidden of position i, token i + 1); the
  // module output of the last one goes to y_.
  void RunSlots(int64_t until);
  // The steps of Generate. Prefill: the prompt, chunk by chunk as the main context takes it,
  // keeping each position's hidden state; MTP slots run once their next token is known.
  void Prefill(Context& ctx, std::span<const int32_t> prompt);
  // Draft: k tokens after `token` (the newest, not yet in ctx) into drafts_: slot n - 1 predicts
  // the first, further drafts chain the module on its own output in slots beyond the verified
  // ones (dropped afterwards).
  void Draft(const Context& ctx, int32_t token, int64_t k, Sampler& sampler);
  // Verify: token and the k drafts in one main-model pass; returns how many drafts are accepted
  // and sets *next to the token that follows them (the correction, or a bonus token when all
  // are accepted).
  int64_t Verify(Context& ctx, int32_t token, int64_t k, Sampler& sampler, GenerateStats& s,
                 int32_t* next);
  // Emit: the accepted drafts, then `next`; the main cache keeps positions n .. n + emitted - 1
  // (the last token emitted is never fed back, as in plain decoding). Returns true to stop;
  // *token is the newest token.
  bool Emit(Context& ctx, int64_t n, int64_t accepted, int32_t next, GenerationState& g,
            int32_t* token);

  const Model& model_;
  const Config& c_;
  const int64_t draft_, max_batch_;
  MtpContext mtp_;
  // Per main position: its final hidden state (after model.norm) and its token. Positions below
  // known_ are valid.
  int64_t known_ = 0;
  AlignedArray<float> hidden_;         // [capacity, D]
  std::vector<int32_t> tokens_;        // [capacity + 1]
  AlignedArray<float> y_;              // [D] MTP output, chained into the next draft
  AlignedArray<float> slot_out_;       // [B, D] MTP outputs of a batch of slots
  AlignedArray<float> verify_logits_;  // [draft + 1, vocab]
  AlignedArray<float> draft_probs_;    // [draft, vocab] q
  int32_t drafts_[kMaxDraft + 1];      // the drafts of a step, then what it emits
  int32_t fed_[kMaxDraft + 1];         // what a verification pass feeds: token, drafts
};

}  // namespace dsv3
