// AdamW over the trainer's float32 master weights (decoupled weight decay on 2-D tensors only,
// bias correction with eps added after it, as torch.optim.AdamW), optional global-norm gradient
// clipping, and the aux-loss-free routing-bias update of DeepSeek-V3 (section 2.1.2).
#pragma once

#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "train/params.h"
#include "train/train_model.h"

namespace dsv3::train {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double clip_norm = 0;  // clip the global gradient L2 norm to this; 0: no clipping
};

class AdamW {
 public:
  AdamW(const Params& params, const AdamWOptions& options);

  // One step at learning rate lr with the gradients in params.grads(): step count t += 1, then
  //   p *= 1 - lr * wd (2-D tensors), m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
  //   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
  // Returns the global gradient L2 norm before clipping.
  double Step(Params& params, double lr);

  int64_t step() const { return t_; }
  // Moments, in the layout of Params (state to save and restore).
  AlignedArray<float>& m() { return m_; }
  AlignedArray<float>& v() { return v_; }
  const AlignedArray<float>& m() const { return m_; }
  const AlignedArray<float>& v() const { return v_; }
  void set_step(int64_t t) { t_ = t; }

 private:
  AdamWOptions o_;
  std::vector<ParamInfo> list_;
  AlignedArray<float> m_, v_;
  int64_t t_ = 0;
};

// b_j += gamma * sign(mean load - load_j) for every layer with a correction bias, from the loads of
// the last forward (float32, sign(0) = 0).
void UpdateRoutingBiases(Params& params, const std::vector<MoeLayerStats>& stats, float gamma);

// sqrt of the sum of squares of every gradient (double accumulation).
double GradNorm(const Params& params);

}  // namespace dsv3::train
