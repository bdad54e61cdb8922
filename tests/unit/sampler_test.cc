// Sampling: greedy ties, seeded determinism, top-k / top-p cuts, and the sampled distribution.
#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"

namespace dsv3 {
namespace {

TEST(Sampler, GreedyTakesTheLowestIdOnTies) {
  const float logits[5] = {1, 3, 3, 2, 3};
  Sampler s({0, 1, 0, 0}, 5);
  EXPECT_EQ(s.Sample(logits), 1);
  EXPECT_EQ(Argmax(logits, 5), 1);
}

TEST(Sampler, SeededAndCut) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.7f) * 3;
  auto draw = [&](SamplingParams p) {
    Sampler s(p, 100);
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Sample(logits.data()));
    return out;
  };
  EXPECT_EQ(draw({1.0f, 1, 0, 42}), draw({1.0f, 1, 0, 42}));
  EXPECT_NE(draw({1.0f, 1, 0, 42}), draw({1.0f, 1, 0, 43}));
  const int32_t best = Argmax(logits.data(), 100);
  for (int32_t t : draw({1.0f, 1, 1, 7})) EXPECT_EQ(t, best);      // top-k 1
  for (int32_t t : draw({1.0f, 1e-6f, 0, 7})) EXPECT_EQ(t, best);  // tiny nucleus
  for (int32_t t : draw({1.0f, 1, 3, 7})) {                        // top-k 3
    int rank = 0;
    for (float l : logits) rank += l > logits[t];
    EXPECT_LT(rank, 3);
  }
}

TEST(Sampler, FollowsTheSoftmax) {
  // Three tokens, temperature 2: expected frequencies from softmax(logits / 2); a fixed seed and
  // 60000 draws keep this deterministic and well within the bound.
  const float logits[3] = {0.0f, 1.0f, 2.0f};
  Sampler s({2.0f, 1, 0, 123}, 3);
  std::vector<int> counts(3);
  const int n = 60000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(logits)];
  double z = 0;
  for (float l : logits) z += std::exp(l / 2);
  double chi2 = 0;
  for (int i = 0; i < 3; ++i) {
    const double expected = n * std::exp(logits[i] / 2) / z;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  EXPECT_LT(chi2, 13.8);  // p = 0.001 for 2 degrees of freedom
}

TEST(Sampler, RejectsBadParameters) {
  EXPECT_THROW(Sampler({-1, 1, 0, 0}, 3), Error);
  EXPECT_THROW(Sampler({1, 0, 0, 0}, 3), Error);
  EXPECT_THROW(Sampler({1, 1.5f, 0, 0}, 3), Error);
  EXPECT_THROW(Sampler({1, 1, -2, 0}, 3), Error);
}

}  // namespace
// OpenAI's logit bias and penalties: a bias of +100 picks its token; a frequency penalty lowers a
// token by its count so far, a presence penalty once it has appeared; both leave other tokens
// alone and apply greedy or sampled; bad values are errors.
TEST(Sampler, LogitBiasAndPenalties) {
  const float logits[4] = {5, 4, 3, 0};
  SamplingParams bias;
  bias.logit_bias = {{3, 100.0f}};
  Sampler b(bias, 4);
  EXPECT_EQ(b.Sample(logits), 3);
  EXPECT_EQ(b.Sample(logits), 3);  // the bias stays
  bias.temperature = 1;
  Sampler bs(bias, 4);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(bs.Sample(logits), 3);

  // Frequency 0.6: token 0 drops by 0.6 per pick (5, 4.4, 3.8, 3.2), token 1 likewise (4, 3.4).
  SamplingParams freq;
  freq.frequency_penalty = 0.6f;
  Sampler f(freq, 4);
  std::vector<int32_t> picks;
  for (int i = 0; i < 5; ++i) picks.push_back(f.Sample(logits));
  EXPECT_EQ(picks, (std::vector<int32_t>{0, 0, 1, 0, 1}));
  // Presence 1.5: once picked, 0 sits at 3.5 and 1 at 2.5 (below 2's 3), however often.
  SamplingParams presence;
  presence.presence_penalty = 1.5f;
  Sampler p(presence, 4);
  picks.clear();
  for (int i = 0; i < 4; ++i) picks.push_back(p.Sample(logits));
  EXPECT_EQ(picks, (std::vector<int32_t>{0, 1, 0, 0}));
  SamplingParams both;
  both.presence_penalty = 2.5f;
  Sampler q(both, 4);
  picks.clear();
  for (int i = 0; i < 3; ++i) picks.push_back(q.Sample(logits));
  EXPECT_EQ(picks, (std::vector<int32_t>{0, 1, 2}));  // 0 and 1 drop to 2.5 and 1.5

  SamplingParams out_of_range;
  out_of_range.logit_bias = {{4, 1.0f}};
  EXPECT_THROW(Sampler(out_of_range, 4), Error);
  SamplingParams nan;
  nan.frequency_penalty = NAN;
  EXPECT_THROW(Sampler(nan, 4), Error);
}

}  // namespace dsv3

namespace dsv3 {
namespace {
// The log-probabilities of the distribution drawn from (bias and temperature applied; greedy at
// temperature 1), by hand: logits {1, 3, 2, 3} -> log softmax.
TEST(Sampler, LogprobsOfTheSampledDistribution) {
  const float logits[4] = {1, 3, 2, 3};
  auto lse = [&](double t, const float* l) {
    double s = 0;
    for (int v = 0; v < 4; ++v) s += std::exp(l[v] / t);
    return std::log(s);
  };
  SamplingParams g;
  g.logprobs = 2;
  Sampler greedy(g, 4);
  EXPECT_EQ(greedy.Sample(logits), 1);
  const TokenLogprobs& a = greedy.logprobs();
  EXPECT_EQ(a.token, 1);
  EXPECT_NEAR(a.logprob, 3 - lse(1, logits), 1e-6);
  ASSERT_EQ(a.top.size(), 2u);
  EXPECT_EQ(a.top[0].first, 1);  // the tie 3 / 3 goes to the lower id
  EXPECT_EQ(a.top[1].first, 3);
  EXPECT_NEAR(a.top[1].second, 3 - lse(1, logits), 1e-6);

  SamplingParams t;
  t.temperature = 0.5f;
  t.top_p = 0.5f;  // cuts the draw, not the reported distribution
  t.logprobs = 4;
  t.logit_bias = {{0, 2.5f}};  // logit 1 -> 3.5, now the most likely
  Sampler hot(t, 4);
  const int32_t tok = hot.Sample(logits);
  const float biased[4] = {3.5f, 3, 2, 3};
  const TokenLogprobs& b = hot.logprobs();
  EXPECT_EQ(b.token, tok);
  EXPECT_NEAR(b.logprob, biased[tok] / 0.5 - lse(0.5, biased), 1e-5);
  ASSERT_EQ(b.top.size(), 4u);
  EXPECT_EQ(b.top[0].first, 0);
  EXPECT_EQ(b.top[3].first, 2);
  double total = 0;
  for (const auto& [id, lp] : b.top) total += std::exp(lp);
  EXPECT_NEAR(total, 1.0, 1e-5);

  SamplingParams none;
  Sampler off(none, 4);
  off.Sample(logits);
  EXPECT_TRUE(off.logprobs().top.empty());
  SamplingParams many;
  many.logprobs = kMaxTopLogprobs + 1;
  EXPECT_THROW(Sampler(many, 4), Error);
}
}  // namespace
}  // namespace dsv3
