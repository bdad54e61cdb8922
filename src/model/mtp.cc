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
      // A sequence's step never exceeds its capacity; a batch of several may.
      max_batch_(
          std::max<int64_t>(1, std::min(o.max_batch, o.capacity * std::max<int64_t>(o.slots, 1)))),
      matmul_(o.matmul),
      n_past_(static_cast<size_t>(std::max<int64_t>(o.slots, 1)), 0),
      cache_(c_, 1, std::max<int64_t>(o.slots, 1), o.capacity, o.kv_cache),
      step_(c_, model.rope(), max_batch_),
      layer_(c_, model.rope(), max_batch_, o.capacity, o.attention, o.kv_cache, model.group()),
      head_(c_, max_batch_),
      cat_(max_batch_ * 2 * c_.hidden_size),
      x_(max_batch_ * c_.hidden_size),
      last_logits_(c_.vocab_size),
      rows_(static_cast<size_t>(max_batch_)),
      last_rows_(n_past_.size()) {
  for (int64_t i = 0; i < max_batch_; ++i) rows_[i] = i;
}

void MtpContext::Embed(int64_t t, const float* hidden, int32_t next_token) {
  const int64_t D = c_.hidden_size;
  const float eps = static_cast<float>(c_.rms_norm_eps);
  float* e = cat_.data() + t * 2 * D;  // [2D]
  kernels::DequantRow(w_.embed, next_token, e);
  kernels::RmsNorm(e, w_.enorm.data(), eps, D, e);
  kernels::RmsNorm(hidden, w_.hnorm.data(), eps, D, e + D);
}

const ForwardStep& MtpContext::Run(int64_t T, kernels::MatMulPath path, ForwardTrace* trace) {
  const int64_t D = c_.hidden_size;
  float* x = x_.data();  // [T, D]
  const ForwardStep& step = step_.Build(T, {.path = path, .precision = matmul_}, trace);
  // In a process group only rank 0 drafts; the other ranks serve the module's experts.
  if (ProcessGroup* g = model_.group()) g->AnnounceMtp(k_, step.matmul);
  kernels::MatMul(w_.eh_proj, cat_.data(), 2 * D, T, x, D, step.matmul);
  const std::string name = trace ? "mtp" + std::to_string(k_) : "";
  if (trace) trace->Emit(name + ".eh_proj_out", x, T, D, D);
  layer_.Forward(step, w_.layer, c_.num_hidden_layers + k_, 0, cache_, x, name);
  return step;
}

void MtpContext::Forward(const float* hidden, int64_t hidden_stride,
                         std::span<const int32_t> next_tokens, const ForwardOutputs& out,
                         ForwardTrace* trace) {
  const int64_t T = static_cast<int64_t>(next_tokens.size()), D = c_.hidden_size;
  if (T == 0) return;
  if (T > max_batch_) Fail("MTP step of {} slots exceeds its batch of {}", T, max_batch_);
  CheckTokens(c_, next_tokens, n_past_[0], cache_.capacity());
  CheckOutputs(c_, out, T);
  for (int64_t t = 0; t < T; ++t) {
    Embed(t, hidden + t * hidden_stride, next_tokens[t]);
    step_.positions()[t] = n_past_[0] + t;
    step_.slots()[t] = 0;
  }
  const ForwardStep& step = Run(T, kernels::MatMulPath::kAuto, trace);
  const float* x = x_.data();
  n_past_[0] += T;
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

void MtpContext::ForwardBatch(std::span<const Step> steps, float* logits, bool exact,
                              const ForwardOutputs& out) {
  const int64_t D = c_.hidden_size;
  if (model_.group() != nullptr) Fail("batched MTP steps are not available in a process group");
  if (!out.logits.empty())
    Fail("MtpContext::ForwardBatch gives the logits of each step's last slot");
  int64_t T = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& s = steps[i];
    if (s.seq < 0 || s.seq >= sequences()) {
      Fail("MTP sequence {} does not exist ({} sequences)", s.seq, sequences());
    }
    if (s.next_tokens.empty()) Fail("MTP batch step {} (sequence {}) has no tokens", i, s.seq);
    for (size_t j = 0; j < i; ++j) {
      if (steps[j].seq == s.seq) Fail("MTP sequence {} appears twice in one batch", s.seq);
    }
    CheckTokens(c_, s.next_tokens, n_past_[s.seq], cache_.capacity());
    T += static_cast<int64_t>(s.next_tokens.size());
  }
  if (T > max_batch_) Fail("MTP batch of {} slots exceeds its batch of {}", T, max_batch_);
  if (T == 0) return;
  CheckOutputs(c_, out, T);
  int64_t t = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& s = steps[i];
    for (size_t j = 0; j < s.next_tokens.size(); ++j, ++t) {
      Embed(t, s.hidden + static_cast<int64_t>(j) * D, s.next_tokens[j]);
      step_.positions()[t] = n_past_[s.seq] + static_cast<int64_t>(j);
      step_.slots()[t] = s.seq;
    }
    last_rows_[i] = t - 1;
  }
  const ForwardStep& step =
      Run(T, exact ? kernels::MatMulPath::kPerToken : kernels::MatMulPath::kAuto, nullptr);
  for (const Step& s : steps) n_past_[s.seq] += static_cast<int64_t>(s.next_tokens.size());
  if (!out.hidden.empty()) std::copy_n(x_.data(), T * D, out.hidden.data());
  if (logits != nullptr) {
    head_.Forward(step, w_.head_norm, w_.head, x_.data(),
                  std::span<const int64_t>(last_rows_.data(), steps.size()), logits);
  }
}

void MtpContext::CopyPrefix(int32_t from, int32_t to, int64_t n) {
  n = std::clamp<int64_t>(n, 0, n_past_[from]);
  cache_.CopyPrefix(from, to, n);
  n_past_[to] = n;
}

}  // namespace dsv3
