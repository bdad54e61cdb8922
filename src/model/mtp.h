// Multi-token prediction (DeepSeek-V3 section 2.2): the MTP module predicts the token after next
// from the main model's final hidden state at position i and the embedding of token i+1:
//   x_i = eh_proj([RmsNorm(embed(t_{i+1}), enorm) | RmsNorm(h_i, hnorm)])   // embedding half first
//   y_i = DecoderLayer(x_i)                    // its own latent KV cache, RoPE position i
//   p_{i+2} = shared_head.head(RmsNorm(y_i, shared_head.norm))
// An MtpContext runs one module over "slots" i = n_past() ... with its own cache. Like a Context
// it may hold several sequences (ContextOptions::slots), each with its own slots and cache rows,
// run together by ForwardBatch; the single-sequence calls use sequence 0.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "core/aligned.h"
#include "model/decoder_layer.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace dsv3 {

class MtpContext {
 public:
  // Module k of `model` (which must have it), sized like a main Context with `options` (its
  // capacity, max_batch and number of sequences).
  MtpContext(const Model& model, int64_t k, const ContextOptions& options);

  // Slots n_past() .. n_past() + T - 1: hidden [T, D] rows `hidden_stride` floats apart (the main
  // model's final hidden states, or a previous call's out.hidden when drafting further ahead) and
  // the tokens that follow each slot. last_logits() gets the last slot's logits; out.logits, if
  // given, [T, vocab]; out.hidden, if given, the module's outputs y [T, D] (before
  // shared_head.norm). T <= max_batch.
  void Forward(const float* hidden, int64_t hidden_stride, std::span<const int32_t> next_tokens,
               const ForwardOutputs& out = {}, ForwardTrace* trace = nullptr);
  const float* last_logits() const { return last_logits_.data(); }

  // Several sequences in one pass over the module's weights: step i runs slots n_past(seq) ..
  // of sequence steps[i].seq with hidden [tokens, D] (consecutive rows) and the tokens that
  // follow them. logits [steps.size(), vocab], if not null, receives the logits of each step's
  // last slot; out.hidden, if given, the module outputs y [T, D] of all steps in order (T: the
  // tokens of all steps; out.logits is not supported). Sequences appear at most once; T <=
  // max_batch. With `exact`, every product runs the per-token path, so a sequence's results do
  // not depend on the others in the batch. Not in a process group.
  struct Step {
    int32_t seq;
    const float* hidden;
    std::span<const int32_t> next_tokens;
  };
  void ForwardBatch(std::span<const Step> steps, float* logits, bool exact,
                    const ForwardOutputs& out = {});

  int64_t n_past() const { return n_past_[0]; }
  void Truncate(int64_t n) { Truncate(0, n); }
  int64_t n_past(int32_t seq) const { return n_past_[seq]; }
  void Truncate(int32_t seq, int64_t n) { n_past_[seq] = std::clamp<int64_t>(n, 0, n_past_[seq]); }
  // Sequence `to` takes the first n slots of sequence `from` (n <= n_past(from)).
  void CopyPrefix(int32_t from, int32_t to, int64_t n);
  int64_t sequences() const { return static_cast<int64_t>(n_past_.size()); }
  int64_t capacity() const { return cache_.capacity(); }
  const KvCache& cache() const { return cache_; }
  void set_profile(ForwardProfile* profile) { layer_.set_profile(profile); }

 private:
  const Model& model_;
  const Config& c_;
  const MtpWeights& w_;
  const int64_t k_, max_batch_;
  const kernels::MatMulPrecision matmul_;
  std::vector<int64_t> n_past_;  // [sequences]
  KvCache cache_;                // one layer, a slot per sequence
  StepBuilder step_;
  DecoderLayer layer_;
  OutputHead head_;
  AlignedArray<float> cat_;          // [B, 2D] normalized embedding | normalized hidden
  AlignedArray<float> x_;            // [B, D]
  AlignedArray<float> last_logits_;  // [vocab]
  std::vector<int64_t> rows_;        // [B] 0 .. B - 1, the rows that get logits
  std::vector<int64_t> last_rows_;   // [sequences] each batch step's last row

  // Row t of cat_: the normalized embedding of next_token, then the normalized hidden [D].
  void Embed(int64_t t, const float* hidden, int32_t next_token);
  // The module over the T tokens whose embeddings and hidden states are in cat_ and whose
  // positions and sequences the step builder holds; y [T, D] left in x_.
  const ForwardStep& Run(int64_t T, kernels::MatMulPath path, ForwardTrace* trace);
};

}  // namespace dsv3
