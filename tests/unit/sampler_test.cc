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
