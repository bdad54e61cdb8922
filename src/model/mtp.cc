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
      matmul_(o.matmul),
      cache_(c_, 1, 1, o.capacity, o.kv_cache),
      step_(c_, model.rope(), max_batch_),
      layer_(c_, model.rope(), max_batch_, o.capacity, o.attention, o.kv_cache, model.group()),
      head_(c_, max_batch_),
      cat_(max_batch_ * 2 * c_.hidden_size),
      x_(max_batch_ * c_.hidden_size),
      last_logits_(c_.vocab_size),
      rows_(static_cast<size_t>(max_batch_)) {
  for (int64_t i = 0; i < max_batch_; ++i) rows_[i] = i;
}

void MtpContext::Forward(const float* hidden, int64_t hidden_stride,
                         std::span<const int32_t> next_tokens, const ForwardOutputs& out,
                         ForwardTrace* trace) {
  const int64_t T = static_cast<int64_t>(next_tokens.size()), D = c_.hidden_size;
  if (T == 0) return;
  if (T > max_batch_) Fail("MTP step of {} slots exceeds its batch of {}", T, max_batch_);
  CheckTokens(c_, next_tokens, n_past_, cache_.capacity());
  CheckOutputs(c_, out, T);
  const float eps = static_cast<float>(c_.rms_norm_eps);
  float* cat = cat_.data();  // [T, 2D]
  float* x = x_.data();      // [T, D]
  for (int64_t t = 0; t < T; ++t) {
    float* e = cat + t * 2 * D;
    kernels::DequantRow(w_.embed, next_tokens[t], e);
    kernels::RmsNorm(e, w_.enorm.data(), eps, D, e);
    kernels::RmsNorm(hidden + t * hidden_stride, w_.hnorm.data(), eps, D, e + D);
  }
  for (int64_t t = 0; t < T; ++t) {
    step_.positions()[t] = n_past_ + t;
    step_.slots()[t] = 0;
  }
  const ForwardStep& step = step_.Build(T, {.precision = matmul_}, trace);
  // In a process group only rank 0 drafts; the other ranks serve the module's experts.
  if (ProcessGroup* g = model_.group()) g->AnnounceMtp(k_, step.matmul);
  kernels::MatMul(w_.eh_proj, cat, 2 * D, T, x, D, step.matmul);
  const std::string name = trace ? "mtp" + std::to_string(k_) : "";
  if (trace) trace->Emit(name + ".eh_proj_out", x, T, D, D);
  layer_.Forward(step, w_.layer, c_.num_hidden_layers + k_, 0, cache_, x, name);
  n_past_ += T;
  if (!out.hidden.empty()) std::copy_n(x, T * D, out.hidden.data());
  // Logits of every slot, or of the last one only.
  if (!out.logits.empty()) {
    head_.Forward(step, w_.head_norm, w_.head, x, std::span<const int64_t>(rows_.data(), T),
                  out.logits.data());
    std::copy_n(out.logits.data() + (T - 1) * c_.vocab_size, c_.vocab_size, last_logits_.data());
  } else {
    head_.Forward(step, w_.head_norm, w_.head, x, std::span<const int64_t>(&rows_[T - 1], 1),
                  last_logits_.data());
  }
}

}  // namespace dsv3
