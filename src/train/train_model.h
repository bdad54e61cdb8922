// Forward and backward of the DeepSeek V2/V3 family for training, in float32: embedding, RMSNorm,
// MLA (materialized keys and values per head, as a trainer does; YaRN RoPE in the interleaved
// layout), dense SwiGLU and DeepSeekMoE layers (sigmoid noaux_tc with groups and the correction
// bias, or softmax routing), the MTP module, and the objective
//   L = CE + lambda * MTP_CE + sum over MoE layers of the sequence-wise balance loss,
// exactly as ../shared/testdata/training/README.md defines them. Routing selection is a constant
// of the backward pass; the routing weights of the selected experts are differentiated (with the
// top-k renormalization and routed_scaling_factor).
//
// Letters (model/config.h): B sequences of T tokens, rows = B * T; MTP rows = B * (T - 1).
// Every activation the backward pass reads is kept from the forward pass in buffers sized once
// for (B, T): no allocation per step.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/rope.h"
#include "train/linear.h"
#include "train/params.h"

namespace dsv3::train {

struct Objective {
  double mtp_lambda = 0.3;      // weight of the MTP cross-entropy (DeepSeek-V3: 0.3, then 0.1)
  double balance_alpha = 1e-4;  // sequence-wise balance loss factor (DeepSeek-V3: 0.0001)
};

struct MoeLayerStats {
  int64_t layer = 0;  // Hugging Face layer index (MTP layers after the main ones)
  bool is_mtp = false;
  std::vector<int64_t> load;  // [E] tokens routed to each expert over the batch
  double balance_loss = 0;    // this layer's L_l
  std::string bias_name;      // its e_score_correction_bias, "" without one
};

struct Losses {
  double total = 0, ce = 0, mtp_ce = 0, balance = 0;
};

class Block;

// Model FLOPs of training on one token of a sequence of `seq` (forward + backward = 3 x forward),
// counting the matrix products only, 2 per multiply-add: every linear layer a token uses (the
// selected routed experts, the shared experts, router, lm_head, MTP's eh_proj, block and head)
// and attention over the causal context ((seq + 1) / 2 keys on average; MTP depth k over its
// seq - k slots). bench/train_torch.py uses the same formula, so GFLOP/s compare.
double TrainFlopsPerToken(const Config& c, int64_t seq);

class TrainModel {
 public:
  // For batches of `batch` sequences of `seq` tokens (seq >= 2 when the config has MTP).
  TrainModel(Params& params, int64_t batch, int64_t seq, const Objective& objective,
             Precision precision = Precision::kF32);
  ~TrainModel();

  // tokens [B, T + 1]: inputs tokens[:, :T], targets tokens[:, 1:]. Every position counts.
  // Runs the forward pass with the current parameters and biases; returns the losses.
  Losses Forward(const int32_t* tokens);
  // Accumulates dL/dparam into params.grads() (call params.ZeroGrads() first for a fresh step).
  void Backward();

  const std::vector<MoeLayerStats>& moe_stats() const { return moe_stats_; }
  int64_t batch() const { return B_; }
  int64_t seq() const { return T_; }
  // Per-position losses of the last forward: [B, T] and [B, T - 1] (empty without MTP).
  const std::vector<float>& ce_per_position() const { return ce_pos_; }
  const std::vector<float>& mtp_ce_per_position() const { return mtp_ce_pos_; }
  // The main model's logits of the last forward are overwritten by the backward pass; this copy
  // is kept only when asked for (tests).
  void set_keep_logits(bool keep) { keep_logits_ = keep; }
  const std::vector<float>& logits() const { return kept_logits_; }  // [B*T, vocab]

  // Activations of the last forward: the residual stream after main layer l ([B*T, D]; l = -1:
  // the embedding output), the final-norm output hn, and the MTP block's input and output
  // ([B*(T-1), D]).
  const float* residual(int64_t l) const { return x_.data() + (l + 1) * B_ * T_ * c_.hidden_size; }
  const float* final_norm_out() const { return hn_.data(); }
  const float* mtp_eh_proj_out() const { return mtp_x_.data(); }
  const float* mtp_block_out() const { return mtp_y_.data(); }

  // Floating-point operations of one Forward + Backward on a (B, T) batch, counting 2 per
  // multiply-add of every matrix product actually run (routed experts as selected).
  double last_step_flops() const { return flops_; }
  // Seconds spent quantizing operands (BF16 and FP8 modes), accumulated over all steps.
  double quant_seconds() const { return ctx_.quant_seconds; }

 private:
  Params& p_;
  const Config& c_;
  Objective obj_;
  LinearContext ctx_;
  int64_t B_, T_;
  RopeTable rope_;
  std::vector<std::unique_ptr<Block>> blocks_;
  const float* head_embed_ = nullptr;  // the embedding [vocab, D]
  float* embed_grad_ = nullptr;        // its gradient
  Lin head_, eh_proj_;                 // lm_head (or the embedding when tied); MTP eh_proj
  Norm final_norm_, enorm_, hnorm_, head_norm_;
  std::vector<float> cos_, sin_;  // [T, R/2]  // main layers, then the MTP block(s)
  std::vector<MoeLayerStats> moe_stats_;
  std::vector<int32_t> inputs_, targets_;  // [B*T]
  std::vector<float> x0_;                  // [B*T, D] embedding output
  std::vector<float> x_;                   // [L + 1][B*T, D] residual stream per layer boundary
  std::vector<float> hn_, rstd_final_;     // [B*T, D], [B*T]
  std::vector<float> logits_;              // [B*T, vocab]: logits, then probabilities
  std::vector<float> ce_pos_, mtp_ce_pos_;
  // MTP (depth 1)
  std::vector<float> mtp_e_, mtp_en_, mtp_rstd_e_;          // [M, D] embeddings, normalized, [M]
  std::vector<float> mtp_hh_, mtp_rstd_h_;                  // [M, D] hnorm(hn), [M]
  std::vector<float> mtp_cat_;                              // [M, 2D]
  std::vector<float> mtp_x_, mtp_y_, mtp_yn_, mtp_rstd_y_;  // [M, D]
  std::vector<float> mtp_logits_;                           // [M, vocab]
  std::vector<int32_t> mtp_tokens_, mtp_targets_;           // [M]
  // Backward scratch
  std::vector<float> dx_, dhn_, dtmp_, dcat_;
  bool keep_logits_ = false;
  std::vector<float> kept_logits_;
  double flops_ = 0;
};

}  // namespace dsv3::train
