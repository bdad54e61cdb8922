// A loaded model (config, validated weights, RoPE table) and a Context: one sequence's latent KV
// cache plus the scratch for running tokens through the decoder stack.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/decoder_layer.h"
#include "model/head.h"
#include "model/kv_cache.h"
#include "model/mla.h"
#include "model/process_group.h"
#include "model/rope.h"
#include "model/trace.h"
#include "model/weights.h"

namespace dsv3 {

// How the weights are prepared at load. The defaults compute with the checkpoint's weights as
// stored.
struct LoadOptions {
  // The output projection (lm_head, and the MTP heads that share it) quantized to FP8 E4M3 with
  // 128x128 block scales (kernels::QuantizeFp8Blocks), DeepSeek's weight format, unless it is
  // stored in FP8 already: half the bytes a decoded token reads from a BF16 head (for V2-Lite 210
  // of its 419 MB), at an accuracy cost measured in docs/performance.md. Off by default.
  bool fp8_lm_head = false;
};

class Model {
 public:
  // Reads DIR/config.json and the safetensors, binds and validates every tensor the config
  // implies. Throws dsv3::Error naming the file, tensor or field on any problem. With a process
  // group, only the routed experts this rank holds are bound (see process_group.h).
  static std::unique_ptr<Model> Load(const std::string& dir, ProcessGroup* group = nullptr,
                                     const LoadOptions& options = {});

  const Config& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  const RopeTable& rope() const { return rope_; }
  const LoadReport& report() const { return report_; }
  // The MTP modules the checkpoint ships (empty when it has none).
  const std::vector<MtpWeights>& mtp() const { return mtp_; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }
  // The group this model runs in (null: this process alone).
  ProcessGroup* group() const { return group_; }

 private:
  Model() = default;
  ProcessGroup* group_ = nullptr;
  Config config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  Weights weights_;
  std::vector<MtpWeights> mtp_;
  std::unique_ptr<kernels::Fp8Weights> fp8_lm_head_;  // LoadOptions::fp8_lm_head
  RopeTable rope_;
  LoadReport report_;
};

struct ContextOptions {
  int64_t capacity =
      4096;  // positions the latent cache holds per sequence (<= max_position_embeddings)
  int64_t max_batch = 256;  // tokens per forward pass; longer prompts run in several chunks
  AttentionImpl attention = AttentionImpl::kAuto;
  int64_t slots = 1;  // sequences the cache holds (ForwardBatch); slot 0 is the single-sequence API
  KvCacheType kv_cache = KvCacheType::kF32;  // element type of the latent cache (see kv_cache.h)
  // Precision of the activations in the tile products (see kernels/matmul.h); each context runs
  // at its own.
  kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32;
};

// The latent KV cache of one or more sequences plus the scratch for running tokens through the
// decoder stack. The single-sequence calls (Forward, n_past(), Truncate(n)) use slot 0.
class Context {
 public:
  // In a process group (model.group()), rank 0's contexts drive: every forward pass, prefix copy
  // and the context's creation are announced to the other ranks, which follow (ep::Follow) with
  // contexts of their own. Slots live on the ranks that own them (see process_group.h).
  Context(const Model& model, const ContextOptions& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Runs `tokens` at positions n_past() .. n_past() + T - 1 and appends them to the cache.
  // out.logits, if given, receives [T, vocab]; last_logits() always holds the last row.
  // out.hidden, if given, receives the final hidden states [T, D] (after model.norm: the lm_head
  // input, which the MTP layer reads). Bad ids, a full context or too small outputs are reported
  // (dsv3::Error) before any work is done.
  void Forward(std::span<const int32_t> tokens, const ForwardOutputs& out = {},
               ForwardTrace* trace = nullptr);
  const float* last_logits() const { return last_logits_.data(); }  // [vocab]

  int64_t n_past() const { return n_past_[0]; }
  int64_t capacity() const { return cache_.capacity(); }
  void Truncate(int64_t n) { Truncate(0, n); }  // forget the tokens at positions >= n

  // Several sequences in one pass over the weights: step i appends steps[i].tokens to slot
  // steps[i].slot; logits [steps.size(), vocab] receives the logits after each step's last
  // token. Slots appear at most once; tokens in all <= max_batch. With `exact`, every product
  // runs the per-token path, so each sequence gets bit for bit what it would get decoding alone
  // (use it for steps of one token each; prompt chunks are faster without).
  // out (optional, each part when not empty) receives the outputs of every token of the batch,
  // T being the tokens of all steps in order: out.logits [T, vocab] the logits after each token
  // (then `logits` may be null), out.hidden [T, D] the final hidden states (as Forward's). Not in
  // a process group (the rows stay on the ranks that own the slots).
  struct Step {
    int32_t slot;
    std::span<const int32_t> tokens;
  };
  void ForwardBatch(std::span<const Step> steps, float* logits, bool exact = true,
                    const ForwardOutputs& out = {});
  int64_t n_past(int32_t slot) const { return n_past_[slot]; }
  void Truncate(int32_t slot, int64_t n);
  // Slot `to` takes the first n cached positions of slot `from` (a shared prompt prefix).
  void CopyPrefix(int32_t from, int32_t to, int64_t n);
  int64_t slots() const { return static_cast<int64_t>(n_past_.size()); }
  int64_t max_batch() const { return max_batch_; }

  // Ranks other than 0 of a process group: run this rank's part of a batch rank 0 announced
  // (steps in global slots; only those this rank owns run here), then hand the logits of its own
  // steps to GatherLogits. Rank 0's ForwardBatch does the same after announcing.
  // `every_token`: logits [T, vocab] of all the step's tokens (this process alone); `hidden`, if
  // not null, their final hidden states [T, D].
  void RunPlanned(std::span<const PlannedStep> steps, float* logits, kernels::MatMulPath path,
                  bool every_token = false, float* hidden = nullptr);
  // Ranks other than 0: this rank's part of an announced CopyPrefix.
  void RunCopyPrefix(int32_t from, int32_t to, int64_t n);

  const KvCache& cache() const { return cache_; }
  // Phase timing of later Forward calls (null: off).
  void set_profile(ForwardProfile* profile);
  // Bytes of scratch this context allocated besides the KV cache (fixed at construction).
  size_t scratch_bytes() const;
  // Benchmarks only: fills slot 0 with n random rows and sets n_past() = n, standing in for a
  // long history without computing it.
  void FillRandomHistory(int64_t n, uint64_t seed);
  const Model& model() const { return model_; }
  kernels::MatMulPrecision matmul_precision() const { return matmul_; }

 private:
  void CheckSlotTokens(std::span<const int32_t> tokens, int32_t slot) const;
  // The decoder stack for the T <= max_batch tokens in tokens_ and the step builder's positions
  // and slots. Logits for rows logit_rows_[0 .. n_logit_rows) go to `logits` ([n, vocab]).
  void Run(int64_t T, int64_t n_logit_rows, float* logits, ForwardTrace* trace, float* hidden,
           kernels::MatMulPath path);

  bool driving() const { return group_ != nullptr && group_->rank() == 0; }
  // This rank's cache slot of global slot `slot`.
  int32_t Local(int32_t slot) const { return group_ ? group_->LocalSlot(slot) : slot; }
  bool Owns(int32_t slot) const { return !group_ || group_->SlotOwner(slot) == group_->rank(); }

  const Model& model_;
  const Config& c_;
  ProcessGroup* const group_;
  int64_t id_ = -1;  // the id rank 0 announced this context under (process groups)
  const int64_t max_batch_;
  const kernels::MatMulPrecision matmul_;
  ForwardProfile* profile_ = nullptr;
  std::vector<int64_t> n_past_;  // [slots] (global slots; a follower's are never read)
  KvCache cache_;
  StepBuilder step_;
  DecoderLayer layer_;
  OutputHead head_;
  std::vector<int32_t> tokens_;       // [B]
  std::vector<int64_t> logit_rows_;   // [B]
  std::vector<PlannedStep> planned_;  // [slots] the announced steps of a batch (process groups)
  AlignedArray<float> own_logits_;    // [local slots, vocab] this rank's rows (process groups)
  AlignedArray<float> x_;             // [B, D] residual stream
  AlignedArray<float> last_logits_;   // [vocab]
};

}  // namespace dsv3
