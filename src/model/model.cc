#include "model/model.h"

#include <algorithm>
#include <random>

#include "core/error.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace dsv3 {

std::unique_ptr<Model> Model::Load(const std::string& dir) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = Config::Load(dir);
  m->checkpoint_ = std::make_unique<Checkpoint>(dir);
  m->weights_ = BindWeights(m->config_, *m->checkpoint_, &m->report_, &m->mtp_);
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
}  // namespace

Context::Context(const Model& model, const ContextOptions& o)
    : model_(model),
      c_(model.config()),
      max_batch_(std::max<int64_t>(1, std::min(o.max_batch, o.capacity))),
      cache_(c_, c_.num_hidden_layers, CheckedCapacity(c_, o.capacity)),
      layer_(c_, model.rope(), max_batch_, o.capacity, o.attention),
      x_(max_batch_ * c_.hidden_size),
      xn_(max_batch_ * c_.hidden_size),
      last_logits_(c_.vocab_size) {}

void Context::set_profile(ForwardProfile* profile) {
  profile_ = profile;
  layer_.set_profile(profile);
}

size_t Context::scratch_bytes() const {
  return layer_.scratch_bytes() + sizeof(float) * (x_.size() + xn_.size() + last_logits_.size());
}

void Context::FillRandomHistory(int64_t n, uint64_t seed) {
  if (n > capacity()) Fail("history of {} tokens exceeds the context size of {}", n, capacity());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t l = 0; l < cache_.layers(); ++l) {
    for (int64_t s = 0; s < n; ++s) {
      float* row = cache_.Row(l, s);
      for (int64_t i = 0; i < cache_.width(); ++i) row[i] = normal(rng);
    }
  }
  n_past_ = n;
}

void Context::Truncate(int64_t n) { n_past_ = std::clamp<int64_t>(n, 0, n_past_); }

void Context::Forward(std::span<const int32_t> tokens, float* all_logits, ForwardTrace* trace,
                      float* all_hidden) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (T == 0) return;
  for (int64_t i = 0; i < T; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c_.vocab_size) {
      Fail("token id {} at position {} is out of range: vocab_size is {}", tokens[i], n_past_ + i,
           c_.vocab_size);
    }
  }
  if (n_past_ + T > c_.max_position_embeddings) {
    Fail("{} tokens exceed max_position_embeddings ({})", n_past_ + T, c_.max_position_embeddings);
  }
  if (n_past_ + T > capacity()) {
    Fail("{} tokens exceed the context size of {} (raise --ctx-size)", n_past_ + T, capacity());
  }
  for (int64_t i = 0; i < T; i += max_batch_) {
    const int64_t n = std::min(max_batch_, T - i);
    float* logits = all_logits ? all_logits + i * c_.vocab_size : nullptr;
    float* hidden = all_hidden ? all_hidden + i * c_.hidden_size : nullptr;
    ForwardChunk(tokens.data() + i, n, logits, all_logits != nullptr, trace, hidden);
  }
  if (all_logits) {
    std::copy_n(all_logits + (T - 1) * c_.vocab_size, c_.vocab_size, last_logits_.data());
  }
}

// The decoder stack for T <= max_batch tokens at positions n_past_ .. n_past_ + T - 1.
void Context::ForwardChunk(const int32_t* tokens, int64_t T, float* logits, bool all_rows,
                           ForwardTrace* trace, float* hidden) {
  const Weights& w = model_.weights();
  const int64_t D = c_.hidden_size;
  float* x = x_.data();    // [T, D]
  float* xn = xn_.data();  // [T, D]
  {
    PhaseTimer timer(profile_, Phase::kEmbed);
    for (int64_t t = 0; t < T; ++t) kernels::DequantRow(w.embed, tokens[t], x + t * D);
  }
  if (trace) trace->Emit("embed", x, T, D, D);
  layer_.SetPositions(n_past_, T);
  for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
    layer_.Forward(w.layers[l], l, l, cache_, x, trace, trace ? "layer" + std::to_string(l) : "");
  }
  n_past_ += T;

  // Final norm and lm_head, on every row or only the last.
  PhaseTimer timer(profile_, Phase::kLmHead);
  const float eps = static_cast<float>(c_.rms_norm_eps);
  for (int64_t t = 0; t < T; ++t)
    kernels::RmsNorm(x + t * D, w.final_norm.data(), eps, D, xn + t * D);
  if (trace) {
    trace->Emit("final_hidden_pre_norm", x, T, D, D);
    trace->Emit("final_hidden_post_norm", xn, T, D, D);
  }
  if (hidden) std::copy_n(xn, T * D, hidden);
  if (all_rows) {
    kernels::MatMul(w.lm_head, xn, D, T, logits, c_.vocab_size);
  } else {
    kernels::MatMul(w.lm_head, xn + (T - 1) * D, D, 1, last_logits_.data(), c_.vocab_size);
  }
}

}  // namespace dsv3
