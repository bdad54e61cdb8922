// Multi-token prediction (DeepSeek-V3 section 2.2): the MTP module predicts the token after next
// from the main model's final hidden state at position i and the embedding of token i+1:
//   x_i = eh_proj([RmsNorm(embed(t_{i+1}), enorm) | RmsNorm(h_i, hnorm)])   // embedding half first
//   y_i = DecoderLayer(x_i)                    // its own latent KV cache, RoPE position i
//   p_{i+2} = shared_head.head(RmsNorm(y_i, shared_head.norm))
// An MtpContext runs one module over "slots" i = n_past() ... with its own cache.
#pragma once

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
  // Module k of `model` (which must have it), sized like a main Context with `options`.
  MtpContext(const Model& model, int64_t k, const ContextOptions& options);

  // Slots n_past() .. n_past() + T - 1: hidden [T, D] rows `hidden_stride` floats apart (the main
  // model's final hidden states, or a previous call's out.hidden when drafting further ahead) and
  // the tokens that follow each slot. last_logits() gets the last slot's logits; out.logits, if
  // given, [T, vocab]; out.hidden, if given, the module's outputs y [T, D] (before
  // shared_head.norm). T <= max_batch.
  void Forward(const float* hidden, int64_t hidden_stride, std::span<const int32_t> next_tokens,
               const ForwardOutputs& out = {}, ForwardTrace* trace = nullptr);
  const float* last_logits() const { return last_logits_.data(); }

  int64_t n_past() const { return n_past_; }
  void Truncate(int64_t n) { n_past_ = std::min(n, n_past_); }
  int64_t capacity() const { return cache_.capacity(); }
  const KvCache& cache() const { return cache_; }
  void set_profile(ForwardProfile* profile) { layer_.set_profile(profile); }

 private:
  const Model& model_;
  const Config& c_;
  const MtpWeights& w_;
  const int64_t k_, max_batch_;
  const kernels::MatMulPrecision matmul_;
  int64_t n_past_ = 0;
  KvCache cache_;  // one layer
  StepBuilder step_;
  DecoderLayer layer_;
  OutputHead head_;
  AlignedArray<float> cat_;          // [B, 2D] normalized embedding | normalized hidden
  AlignedArray<float> x_;            // [B, D]
  AlignedArray<float> last_logits_;  // [vocab]
  std::vector<int64_t> rows_;        // [B] 0 .. B - 1, the rows that get logits
};

}  // namespace dsv3
