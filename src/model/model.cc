#include "model/model.h"

#include <algorithm>
#include <random>

#include "core/error.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace dsv3 {

std::unique_ptr<Model> Model::Load(const std::string& dir, ProcessGroup* group,
                                   const LoadOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->group_ = group;
  m->config_ = Config::Load(dir);
  ExpertFilter holds;
  if (group != nullptr) {
    group->Prepare(m->config_);
    holds = [group](int64_t e) { return group->ExpertOwner(e) == group->rank(); };
  }
  m->checkpoint_ = std::make_unique<Checkpoint>(dir);
  m->weights_ = BindWeights(m->config_, *m->checkpoint_, &m->report_, &m->mtp_, holds);
  if (options.fp8_lm_head && m->weights_.lm_head.dtype != DType::kF8E4M3) {
    m->fp8_lm_head_ = kernels::QuantizeFp8Blocks(m->weights_.lm_head);
    m->weights_.lm_head = m->fp8_lm_head_->matrix;
    for (MtpWeights& mtp : m->mtp_) {
      if (mtp.shares_head) mtp.head = m->weights_.lm_head;
    }
  }
  m->rope_ = ComputeRope(m->config_);
  return m;
}

namespace {
int64_t CheckedCapacity(const Config& c, int64_t capacity) {
  if (capacity < 1 || capacity > c.max_position_embeddings) {
    Fail("context size {} must be between 1 and max_position_embeddings ({})", capacity,
         c.max_position_embeddings);
  }
  return capacity;
}
// The cache slots this process holds of `slots` sequences.
int64_t LocalSlots(const ProcessGroup* group, int64_t slots) {
  return group ? group->LocalSlots(slots, group->rank()) : slots;
}
}  // namespace

Context::Context(const Model& model, const ContextOptions& o)
    : model_(model),
      c_(model.config()),
      group_(model.group()),
      max_batch_(std::max<int64_t>(1, o.max_batch)),
      matmul_(o.matmul),
      n_past_(static_cast<size_t>(std::max<int64_t>(o.slots, 1)), 0),
      cache_(c_, c_.num_hidden_layers, LocalSlots(group_, std::max<int64_t>(o.slots, 1)),
             CheckedCapacity(c_, o.capacity), o.kv_cache),
      step_(c_, model.rope(), max_batch_),
      layer_(c_, model.rope(), max_batch_, o.capacity, o.attention, o.kv_cache, group_),
      head_(c_, max_batch_),
      tokens_(static_cast<size_t>(max_batch_)),
      logit_rows_(static_cast<size_t>(max_batch_)),
      own_logits_(group_ ? cache_.slots() * c_.vocab_size : 0),
      x_(max_batch_ * c_.hidden_size),
      last_logits_(c_.vocab_size) {
  planned_.reserve(n_past_.size());
  if (driving()) id_ = group_->OpenContext(o);
}

Context::~Context() {
  if (driving()) group_->CloseContext(id_);
}

void Context::set_profile(ForwardProfile* profile) {
  profile_ = profile;
  layer_.set_profile(profile);
}

size_t Context::scratch_bytes() const {
  return layer_.scratch_bytes() + step_.scratch_bytes() + head_.scratch_bytes() +
         sizeof(float) * (x_.size() + last_logits_.size());
}

void Context::FillRandomHistory(int64_t n, uint64_t seed) {
  if (n > capacity()) Fail("history of {} tokens exceeds the context size of {}", n, capacity());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(cache_.width()));
  for (int64_t l = 0; l < cache_.layers(); ++l) {
    for (int64_t s = 0; s < n; ++s) {
      for (float& v : row) v = normal(rng);
      cache_.Store(l, 0, s, row.data());
    }
  }
  n_past_[0] = n;
}

void Context::Truncate(int32_t slot, int64_t n) {
  n_past_[slot] = std::clamp<int64_t>(n, 0, n_past_[slot]);
}

void Context::CopyPrefix(int32_t from, int32_t to, int64_t n) {
  n = std::clamp<int64_t>(n, 0, n_past_[from]);
  if (driving()) group_->AnnounceCopyPrefix(id_, from, to, n);
  RunCopyPrefix(from, to, n);
  n_past_[to] = n;
}

void Context::RunCopyPrefix(int32_t from, int32_t to, int64_t n) {
  if (!group_) return cache_.CopyPrefix(from, to, n);
  const int a = group_->SlotOwner(from), b = group_->SlotOwner(to), me = group_->rank();
  if (a == b) {
    if (a == me) cache_.CopyPrefix(Local(from), Local(to), n);
    return;
  }
  const size_t bytes = static_cast<size_t>(n * cache_.width() * cache_.element_size());
  for (int64_t l = 0; l < cache_.layers() && bytes > 0; ++l) {
    if (me == a) group_->SendBytes(b, cache_.RawRows(l, Local(from)), bytes);
    if (me == b) group_->ReceiveBytes(a, cache_.RawRows(l, Local(to)), bytes);
  }
}

void Context::CheckSlotTokens(std::span<const int32_t> tokens, int32_t slot) const {
  if (slot < 0 || slot >= slots())
    Fail("sequence slot {} does not exist ({} slots)", slot, slots());
  CheckTokens(c_, tokens, n_past_[slot], capacity());
}

void Context::Forward(std::span<const int32_t> tokens, const ForwardOutputs& out,
                      ForwardTrace* trace) {
  const int64_t T = static_cast<int64_t>(tokens.size()), V = c_.vocab_size, D = c_.hidden_size;
  if (T == 0) return;
  CheckSlotTokens(tokens, 0);
  CheckOutputs(c_, out, T);
  float* all_logits = out.logits.empty() ? nullptr : out.logits.data();
  float* all_hidden = out.hidden.empty() ? nullptr : out.hidden.data();
  for (int64_t i = 0; i < T; i += max_batch_) {
    const int64_t n = std::min(max_batch_, T - i);
    for (int64_t t = 0; t < n; ++t) {
      tokens_[t] = tokens[i + t];
      step_.slots()[t] = 0;
      step_.positions()[t] = n_past_[0] + t;
    }
    int64_t n_rows = 1;
    if (all_logits) {
      for (int64_t t = 0; t < n; ++t) logit_rows_[t] = t;
      n_rows = n;
    } else {
      logit_rows_[0] = n - 1;
    }
    if (driving()) {  // slot 0 is rank 0's: the others only serve its experts
      const PlannedStep s{0, n_past_[0], tokens.subspan(static_cast<size_t>(i), n)};
      group_->AnnounceBatch(id_, std::span<const PlannedStep>(&s, 1), kernels::MatMulPath::kAuto);
    }
    Run(n, n_rows, all_logits ? all_logits + i * V : last_logits_.data(), trace,
        all_hidden ? all_hidden + i * D : nullptr, kernels::MatMulPath::kAuto);
    n_past_[0] += n;
  }
  if (all_logits) std::copy_n(all_logits + (T - 1) * V, V, last_logits_.data());
}

void Context::ForwardBatch(std::span<const Step> steps, float* logits, bool exact,
                           const ForwardOutputs& out) {
  int64_t T = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    CheckSlotTokens(steps[i].tokens, steps[i].slot);
    if (steps[i].tokens.empty()) Fail("batch step {} (slot {}) has no tokens", i, steps[i].slot);
    for (size_t j = 0; j < i; ++j) {
      if (steps[j].slot == steps[i].slot) Fail("slot {} appears twice in one batch", steps[i].slot);
    }
    T += static_cast<int64_t>(steps[i].tokens.size());
  }
  if (T > max_batch_) Fail("batch of {} tokens exceeds max_batch ({})", T, max_batch_);
  const bool every_token = !out.logits.empty();
  if (group_ && (every_token || !out.hidden.empty())) {
    Fail("the outputs of every token of a batch are not available in a process group");
  }
  CheckOutputs(c_, out, T);
  if (!every_token && logits == nullptr) Fail("ForwardBatch needs somewhere to put the logits");
  if (T == 0) return;
  planned_.clear();
  for (const Step& s : steps) planned_.push_back({s.slot, n_past_[s.slot], s.tokens});
  const kernels::MatMulPath path =
      exact ? kernels::MatMulPath::kPerToken : kernels::MatMulPath::kAuto;
  if (driving()) group_->AnnounceBatch(id_, planned_, path);
  RunPlanned(planned_, every_token ? out.logits.data() : logits, path, every_token,
             out.hidden.empty() ? nullptr : out.hidden.data());
  const int64_t V = c_.vocab_size;
  int64_t end = 0;  // every token's logits: each step's last row too, when asked for
  for (size_t i = 0; i < steps.size(); ++i) {
    end += static_cast<int64_t>(steps[i].tokens.size());
    if (every_token && logits) std::copy_n(out.logits.data() + (end - 1) * V, V, logits + i * V);
  }
  for (const Step& s : steps) n_past_[s.slot] += static_cast<int64_t>(s.tokens.size());
}

void Context::RunPlanned(std::span<const PlannedStep> steps, float* logits,
                         kernels::MatMulPath path, bool every_token, float* hidden) {
  int64_t T = 0, rows = 0;  // this rank's tokens and the rows that get logits
  for (const PlannedStep& s : steps) {
    if (!Owns(s.slot)) continue;
    for (size_t k = 0; k < s.tokens.size(); ++k, ++T) {
      tokens_[T] = s.tokens[k];
      step_.slots()[T] = Local(s.slot);
      step_.positions()[T] = s.position + static_cast<int64_t>(k);
      if (every_token) logit_rows_[rows++] = T;
    }
    if (!every_token) logit_rows_[rows++] = T - 1;
  }
  if (!group_) return Run(T, rows, logits, nullptr, hidden, path);
  Run(T, rows, own_logits_.data(), nullptr, nullptr, path);
  group_->GatherLogits(steps, own_logits_.data(), logits, c_.vocab_size);
}

void Context::Run(int64_t T, int64_t n_logit_rows, float* logits, ForwardTrace* trace,
                  float* hidden, kernels::MatMulPath path) {
  const Weights& w = model_.weights();
  const int64_t D = c_.hidden_size;
  float* x = x_.data();  // [T, D]
  if (T > 0) {
    PhaseTimer timer(profile_, Phase::kEmbed);
    for (int64_t t = 0; t < T; ++t) kernels::DequantRow(w.embed, tokens_[t], x + t * D);
    if (trace) trace->Emit("embed", x, T, D, D);
  }
  const ForwardStep& step = step_.Build(T, {.path = path, .precision = matmul_}, trace);
  for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
    layer_.Forward(step, w.layers[l], l, l, cache_, x, trace ? "layer" + std::to_string(l) : "");
  }
  if (T == 0) return;  // a rank with no tokens of its own in this step (process groups)

  // Final norm, then lm_head on the rows that need logits.
  PhaseTimer timer(profile_, Phase::kLmHead);
  const float* xn =
      head_.Forward(step, w.final_norm, w.lm_head, x,
                    std::span<const int64_t>(logit_rows_.data(), n_logit_rows), logits);
  if (trace) {
    trace->Emit("final_hidden_pre_norm", x, T, D, D);
    trace->Emit("final_hidden_post_norm", xn, T, D, D);
  }
  if (hidden) std::copy_n(xn, T * D, hidden);
}

}  // namespace dsv3
