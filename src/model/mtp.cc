#include "model/mtp.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace dsv3 {

MtpContext::MtpContext(const Model& model, int64_t k, const ContextOptions& o)
    : model_(model),
      c_(model.config()),
      w_(model.mtp().at(static_cast<size_t>(k))),
      k_(k),
      max_batch_(std::max<int64_t>(1, std::min(o.max_batch, o.capacity))),
      cache_(c_, 1, 1, o.capacity, o.kv_cache),
      layer_(c_, model.rope(), max_batch_, o.capacity, o.attention, o.kv_cache),
      cat_(max_batch_ * 2 * c_.hidden_size),
      x_(max_batch_ * c_.hidden_size),
      xn_(max_batch_ * c_.hidden_size),
      last_logits_(c_.vocab_size),
      positions_(static_cast<size_t>(max_batch_)),
      slots_(static_cast<size_t>(max_batch_)) {}

void MtpContext::Forward(const float* hidden, int64_t hidden_stride,
                         std::span<const int32_t> next_tokens, float* all_logits, float* out_hidden,
                         ForwardTrace* trace) {
  const int64_t T = static_cast<int64_t>(next_tokens.size()), D = c_.hidden_size;
  if (T == 0) return;
  if (T > max_batch_) Fail("MTP step of {} slots exceeds its batch of {}", T, max_batch_);
  if (n_past_ + T > cache_.capacity()) {
    Fail("MTP slots {} exceed the context size of {}", n_past_ + T, cache_.capacity());
  }
  for (int64_t t = 0; t < T; ++t) {
    if (next_tokens[t] < 0 || next_tokens[t] >= c_.vocab_size) {
      Fail("token id {} is out of range: vocab_size is {}", next_tokens[t], c_.vocab_size);
    }
  }
  const float eps = static_cast<float>(c_.rms_norm_eps);
  float* cat = cat_.data();  // [T, 2D]
  float* x = x_.data();      // [T, D]
  float* xn = xn_.data();    // [T, D]
  for (int64_t t = 0; t < T; ++t) {
    float* e = cat + t * 2 * D;
    kernels::DequantRow(w_.embed, next_tokens[t], e);
    kernels::RmsNorm(e, w_.enorm.data(), eps, D, e);
    kernels::RmsNorm(hidden + t * hidden_stride, w_.hnorm.data(), eps, D, e + D);
  }
  kernels::MatMul(w_.eh_proj, cat, 2 * D, T, x, D);
  const std::string name = trace ? "mtp" + std::to_string(k_) : "";
  if (trace) trace->Emit(name + ".eh_proj_out", x, T, D, D);
  for (int64_t t = 0; t < T; ++t) {
    positions_[t] = n_past_ + t;
    slots_[t] = 0;
  }
  layer_.SetTokens(positions_.data(), slots_.data(), T);
  layer_.Forward(w_.layer, c_.num_hidden_layers + k_, 0, cache_, x, trace, name);
  n_past_ += T;
  if (out_hidden) std::copy_n(x, T * D, out_hidden);
  for (int64_t t = 0; t < T; ++t)
    kernels::RmsNorm(x + t * D, w_.head_norm.data(), eps, D, xn + t * D);
  if (all_logits) {
    kernels::MatMul(w_.head, xn, D, T, all_logits, c_.vocab_size);
    std::copy_n(all_logits + (T - 1) * c_.vocab_size, c_.vocab_size, last_logits_.data());
  } else {
    kernels::MatMul(w_.head, xn + (T - 1) * D, D, 1, last_logits_.data(), c_.vocab_size);
  }
}

}  // namespace dsv3
