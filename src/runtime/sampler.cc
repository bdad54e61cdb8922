#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dsv3 {

int32_t Argmax(const float* values, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (values[i] > values[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplingParams& params, int64_t vocab)
    : params_(params), vocab_(vocab), rng_(params.seed), candidates_(vocab), probs_(vocab) {
  if (!(params.temperature >= 0) || !std::isfinite(params.temperature)) {
    Fail("temperature must be >= 0, got {}", params.temperature);
  }
  if (!(params.top_p > 0 && params.top_p <= 1))
    Fail("top-p must be in (0, 1], got {}", params.top_p);
  if (params.top_k < 0) Fail("top-k must be >= 0, got {}", params.top_k);
  for (const auto& [id, bias] : params.logit_bias) {
    if (id < 0 || id >= vocab) Fail("logit bias for token {}: vocab_size is {}", id, vocab);
    if (!std::isfinite(bias)) Fail("logit bias for token {} is not finite", id);
  }
  if (!std::isfinite(params.frequency_penalty) || !std::isfinite(params.presence_penalty)) {
    Fail("the frequency and presence penalties must be finite");
  }
  adjusts_ =
      !params.logit_bias.empty() || params.frequency_penalty != 0 || params.presence_penalty != 0;
  if (adjusts_) {
    adjusted_.resize(static_cast<size_t>(vocab));
    counts_.assign(static_cast<size_t>(vocab), 0);
  }
  if (params.logprobs > kMaxTopLogprobs) {
    Fail("at most {} alternatives per token, got {}", kMaxTopLogprobs, params.logprobs);
  }
  logprobs_.top.reserve(static_cast<size_t>(kMaxTopLogprobs));
}

double Sampler::Uniform() {
  return static_cast<double>(rng_() >> 11) * 0x1p-53;  // 53 random bits, portable
}

namespace {
// Candidates (logit, id) by logit, descending, ties to the lower id.
bool ByLogit(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}
}  // namespace

void Sampler::Probabilities(const float* logits, float* probs) {
  if ((params_.top_k == 0 || params_.top_k >= vocab_) && params_.top_p >= 1) {
    // No cut: the softmax with temperature in id order (sorting 100k+ candidates would cost
    // milliseconds per token for nothing).
    float max = logits[0];
    for (int64_t i = 1; i < vocab_; ++i) max = std::max(max, logits[i]);
    double sum = 0;
    for (int64_t i = 0; i < vocab_; ++i) {
      const double p = std::exp((logits[i] - max) / params_.temperature);
      probs[i] = static_cast<float>(p);
      sum += p;
    }
    for (int64_t i = 0; i < vocab_; ++i) probs[i] = static_cast<float>(probs[i] / sum);
    return;
  }
  // Candidates sorted by logit (descending, ties to the lower id), cut to top-k.
  for (int64_t i = 0; i < vocab_; ++i) candidates_[i] = {logits[i], static_cast<int32_t>(i)};
  int64_t n = vocab_;
  if (params_.top_k > 0 && params_.top_k < n) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + params_.top_k, candidates_.end(),
                      ByLogit);
    n = params_.top_k;
  } else {
    std::sort(candidates_.begin(), candidates_.end(), ByLogit);
  }
  // Softmax with temperature over the candidates, then the top-p nucleus.
  const float max = candidates_[0].first;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = std::exp((candidates_[i].first - max) / params_.temperature);
    candidates_[i].first = static_cast<float>(p);
    sum += p;
  }
  if (params_.top_p < 1) {
    double cumulative = 0;
    int64_t keep = 0;
    while (keep < n) {
      cumulative += candidates_[keep++].first / sum;
      if (cumulative >= params_.top_p) break;
    }
    n = keep;
    sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += candidates_[i].first;
  }
  std::fill(probs, probs + vocab_, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    probs[candidates_[i].second] = static_cast<float>(candidates_[i].first / sum);
  }
}

int32_t Sampler::Draw(const float* weights) {
  double total = 0;
  for (int64_t i = 0; i < vocab_; ++i) total += weights[i];
  const double u = Uniform() * total;
  double acc = 0;
  int32_t last = 0;
  for (int64_t i = 0; i < vocab_; ++i) {
    if (weights[i] <= 0) continue;
    acc += weights[i];
    last = static_cast<int32_t>(i);
    if (u < acc) return last;
  }
  return last;
}

int32_t Sampler::Draft(const float* draft_logits, float* q) {
  if (greedy()) return Argmax(draft_logits, vocab_);
  Probabilities(draft_logits, q);
  return Draw(q);
}

bool Sampler::Verify(const float* logits, int32_t draft, const float* q, int32_t* next) {
  if (greedy()) {
    *next = Argmax(logits, vocab_);
    return *next == draft;
  }
  float* p = probs_.data();
  Probabilities(logits, p);
  if (Uniform() * q[draft] < p[draft]) return true;  // probability min(1, p/q)
  for (int64_t v = 0; v < vocab_; ++v) p[v] = std::max(0.0f, p[v] - q[v]);  // the residual
  *next = Draw(p);
  return false;
}

void Sampler::set_mask(LogitMask* mask) {
  mask_ = mask;
  if (mask_ && adjusted_.empty()) adjusted_.resize(static_cast<size_t>(vocab_));
}

int32_t Sampler::Sample(const float* logits) {
  if (adjusts_ || mask_) {  // on a copy: bias and penalties, then the mask
    std::copy_n(logits, vocab_, adjusted_.begin());
    if (adjusts_) {
      for (const auto& [id, bias] : params_.logit_bias) adjusted_[id] += bias;
      const float fp = params_.frequency_penalty, pp = params_.presence_penalty;
      for (int64_t v = 0; v < vocab_; ++v) {
        if (counts_[v] > 0) adjusted_[v] -= fp * static_cast<float>(counts_[v]) + pp;
      }
    }
    if (mask_) mask_->Apply(adjusted_.data());
    logits = adjusted_.data();
  }
  int32_t token;
  if (greedy()) {
    token = Argmax(logits, vocab_);
  } else {
    Probabilities(logits, probs_.data());
    token = Draw(probs_.data());
  }
  if (adjusts_) ++counts_[token];
  if (mask_) mask_->Accept(token);
  if (params_.logprobs >= 0) Logprobs(logits, token);
  return token;
}

void Sampler::Logprobs(const float* logits, int32_t token) {
  // log p(v) = l(v) / T - log sum_u exp(l(u) / T), in double for the sum.
  const double inv_t = greedy() ? 1.0 : 1.0 / params_.temperature;
  float m = logits[0];
  for (int64_t v = 1; v < vocab_; ++v) m = std::max(m, logits[v]);
  double sum = 0;
  for (int64_t v = 0; v < vocab_; ++v) sum += std::exp((logits[v] - m) * inv_t);
  const double lse = m * inv_t + std::log(sum);
  auto lp = [&](int32_t v) { return static_cast<float>(logits[v] * inv_t - lse); };
  logprobs_.token = token;
  logprobs_.logprob = lp(token);
  logprobs_.top.clear();
  const int64_t n = std::min<int64_t>({params_.logprobs, kMaxTopLogprobs, vocab_});
  if (n == 0) return;
  for (int64_t v = 0; v < vocab_; ++v) candidates_[v] = {logits[v], static_cast<int32_t>(v)};
  std::partial_sort(candidates_.begin(), candidates_.begin() + n, candidates_.end(), ByLogit);
  for (int64_t i = 0; i < n; ++i)
    logprobs_.top.push_back({candidates_[i].second, lp(candidates_[i].second)});
}

}  // namespace dsv3
