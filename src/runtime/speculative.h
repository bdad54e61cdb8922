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
  const KvCache& mtp_cache() const { return mtp_.cache(); }
  // True when this decoder has followed every token `ctx` holds (it must see all of them).
  bool InSync(const Context& ctx) const;
  std::vector<int32_t> Generate(Context& ctx, std::span<const int32_t> prompt,
                                const GenerateOptions& options, GenerateStats* stats,
                                const std::function<bool(int32_t)>& on_token);

 private:
  // Main-model hidden states (after model.norm) of positions whose MTP slot has not run yet.
  void Pend(const float* hidden, int64_t n, const int32_t* next_tokens);
  // Runs the pending slots (their next tokens known) through the MTP module.
  void RunPending(float* out_hidden_last);

  const Model& model_;
  const Config& c_;
  const int64_t draft_, max_batch_;
  MtpContext mtp_;
  int64_t pending_ = 0;                 // slots mtp_.n_past() .. + pending_ - 1
  AlignedArray<float> pending_hidden_;  // [B + draft + 1, D]
  std::vector<int32_t> pending_next_;   // their next tokens
  AlignedArray<float> chunk_hidden_;    // [B, D] main hidden states of a prompt chunk
  AlignedArray<float> verify_logits_;   // [draft + 1, vocab]
  AlignedArray<float> verify_hidden_;   // [draft + 1, D]
  AlignedArray<float> draft_probs_;     // [draft, vocab] q
  AlignedArray<float> target_probs_;    // [vocab] p
  AlignedArray<float> y_;               // [D] MTP output, chained into the next draft
};

}  // namespace dsv3
