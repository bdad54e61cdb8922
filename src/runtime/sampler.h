// Next-token choice from logits: greedy (temperature 0, ties to the lower id) or sampling with
// temperature, top-k and top-p from a seeded generator (same seed, same tokens), after OpenAI's
// logit bias and frequency / presence penalties when asked for.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace dsv3 {

struct SamplingParams {
  float temperature = 0;  // 0: greedy
  float top_p = 1;        // (0, 1]
  int64_t top_k = 0;      // 0: all
  uint64_t seed = 0;
  // OpenAI's penalties, over the tokens this sampler has chosen so far (Sample): token v's logit
  // is lowered by frequency_penalty * count(v) + presence_penalty * (count(v) > 0).
  float frequency_penalty = 0, presence_penalty = 0;
  // (id, bias): added to the logit of id before everything else (OpenAI's logit_bias).
  std::vector<std::pair<int32_t, float>> logit_bias = {};
  // What Sample() reports, not how it samples: -1 nothing; n >= 0 the log-probability of each
  // chosen token and of the n most likely tokens (at most kMaxTopLogprobs), see TokenLogprobs.
  int64_t logprobs = -1;
};

inline constexpr int64_t kMaxTopLogprobs = 20;

// The log-probabilities of one step: of the distribution the token was drawn from after bias,
// penalties and temperature, before the top-k and top-p cuts (OpenAI's and llama.cpp's
// convention); a greedy step reports the distribution at temperature 1.
struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely first, ties to the lower id
};

// A constraint on the next token (structured output): Apply sets the logits of the tokens that
// may not come next to -infinity; Accept hears the token chosen.
class LogitMask {
 public:
  virtual ~LogitMask() = default;
  virtual void Apply(float* logits) = 0;
  virtual void Accept(int32_t token) = 0;
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, int64_t vocab);
  bool greedy() const { return params_.temperature == 0; }
  // The next token from logits [vocab] (bias and penalties applied first, on a copy).
  int32_t Sample(const float* logits);
  // After Sample, with params().logprobs >= 0: that step's log-probabilities.
  const TokenLogprobs& logprobs() const { return logprobs_; }
  // Sample applies `mask` (not owned; null: none) after bias and penalties, so that the reported
  // log-probabilities are those of the masked distribution.
  void set_mask(LogitMask* mask);

  // probs[v] for every v < vocab: the distribution Sample() draws from when not greedy
  // (temperature, then the top-k cut, then the top-p nucleus, renormalized; zero elsewhere).
  void Probabilities(const float* logits, float* probs);
  // A draw from a (not necessarily normalized) non-negative weight vector of vocab entries.
  int32_t Draw(const float* weights);
  // Uniform in [0, 1) from the same generator.
  double Uniform();

  // Speculative sampling, one draft position at a time (without bias or penalties). Draft: the
  // token proposed from the draft model's logits (greedy: its argmax; sampling: a draw, with q
  // [vocab] receiving the distribution it was drawn from). Verify: whether the target model's
  // logits accept it (greedy: when it is the target's own argmax; sampling: with probability min(1,
  // p[d] / q[d]) for p the target's distribution). On rejection *next is the token to emit instead:
  // the target's argmax, or a draw from the residual max(0, p - q), so that emitted tokens follow
  // exactly the plain sampler's distribution.
  int32_t Draft(const float* draft_logits, float* q);
  bool Verify(const float* logits, int32_t draft, const float* q, int32_t* next);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  int64_t vocab_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // [vocab], allocated once
  std::vector<float> probs_;                           // [vocab]
  // With bias or penalties: the adjusted logits, and how often each token was chosen.
  bool adjusts_ = false;
  LogitMask* mask_ = nullptr;
  std::vector<float> adjusted_;  // [vocab]
  std::vector<int32_t> counts_;  // [vocab]
  TokenLogprobs logprobs_;       // top reserved for kMaxTopLogprobs
  void Logprobs(const float* logits, int32_t token);
};

// Index of the largest value; ties go to the lower index.
int32_t Argmax(const float* values, int64_t n);

}  // namespace dsv3
