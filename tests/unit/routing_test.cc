// MoE routing (the Gate) on crafted scores: ties, the correction bias, group limits, weights.
#include <gtest/gtest.h>

#include <cmath>

#include "model/config.h"
#include "model/moe.h"

namespace dsv3 {
namespace {

Config Make(const char* method, const char* scoring, int E, int K, int groups, int keep, bool norm,
            double scale) {
  Json j = {{"model_type", "deepseek_v3"},
            {"vocab_size", 8},
            {"hidden_size", 8},
            {"num_hidden_layers", 1},
            {"num_attention_heads", 1},
            {"intermediate_size", 8},
            {"kv_lora_rank", 4},
            {"qk_nope_head_dim", 2},
            {"qk_rope_head_dim", 2},
            {"v_head_dim", 2},
            {"max_position_embeddings", 16},
            {"n_routed_experts", E},
            {"moe_intermediate_size", 4},
            {"num_experts_per_tok", K},
            {"n_group", groups},
            {"topk_group", keep},
            {"topk_method", method},
            {"scoring_func", scoring},
            {"norm_topk_prob", norm},
            {"routed_scaling_factor", scale}};
  return Config::FromJson(j, "test");
}

struct Routed {
  std::vector<int32_t> idx;
  std::vector<float> w;
};

Routed Route(const Config& c, const std::vector<float>& logits,
             const std::vector<float>& bias = {}) {
  RouterScratch scratch(c);
  Routed r{std::vector<int32_t>(c.num_experts_per_tok), std::vector<float>(c.num_experts_per_tok)};
  RouteToken(c, logits.data(), bias.empty() ? nullptr : bias.data(), scratch, r.idx.data(),
             r.w.data());
  return r;
}

float Sigmoid(float x) { return 1 / (1 + std::exp(-x)); }

TEST(Routing, GreedySoftmaxTiesGoToTheLowerIndex) {
  const Config c = Make("greedy", "softmax", 6, 2, 1, 1, false, 1.0);
  const Routed r = Route(c, {0, 1, 0, 1, 1, 0});
  EXPECT_EQ(r.idx, (std::vector<int32_t>{1, 3}));
  const float p = std::exp(1.0f) / (3 * std::exp(1.0f) + 3);
  EXPECT_NEAR(r.w[0], p, 1e-7);  // softmax probability, not renormalized
  EXPECT_NEAR(r.w[1], p, 1e-7);
}

TEST(Routing, BiasSelectsButDoesNotWeigh) {
  const Config c = Make("noaux_tc", "sigmoid", 4, 2, 1, 1, true, 2.5);
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, -1.0f};
  // Without bias: experts 0 and 1. The bias lifts expert 3 above both.
  EXPECT_EQ(Route(c, logits).idx, (std::vector<int32_t>{0, 1}));
  const Routed r = Route(c, logits, {0, 0, 0, 5});
  EXPECT_EQ(r.idx, (std::vector<int32_t>{3, 0}));
  const float s3 = Sigmoid(-1.0f), s0 = Sigmoid(2.0f);
  EXPECT_NEAR(r.w[0], s3 / (s3 + s0) * 2.5f, 1e-6);  // unbiased scores, normalized, scaled
  EXPECT_NEAR(r.w[1], s0 / (s3 + s0) * 2.5f, 1e-6);
}

TEST(Routing, NoauxGroupsRankByTopTwoSum) {
  // 4 groups of 2. Group 0 holds the single best expert but a poor partner; group 1 has two
  // good ones; with topk_group 2, group ranking by top-2 sum keeps groups 1 and 2.
  const Config c = Make("noaux_tc", "sigmoid", 8, 2, 4, 2, true, 1.0);
  const std::vector<float> logits = {5.0f, -5.0f, 2.0f, 2.0f, 1.5f, 1.5f, 0.0f, 0.0f};
  const Routed r = Route(c, logits);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{2, 3}));  // expert 0 is excluded with its group
}

TEST(Routing, GroupLimitedGreedyRanksByMax) {
  const Config c = Make("group_limited_greedy", "softmax", 8, 2, 4, 1, false, 1.0);
  const std::vector<float> logits = {5.0f, -5.0f, 2.0f, 2.0f, 1.5f, 1.5f, 0.0f, 0.0f};
  const Routed r = Route(c, logits);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{0, 1}));  // group 0 has the max; only it is kept
}

TEST(Routing, GroupTiesGoToTheLowerGroup) {
  const Config c = Make("noaux_tc", "sigmoid", 8, 2, 4, 1, true, 1.0);
  const std::vector<float> logits = {0, 0, 1, 1, 1, 1, 0, 0};  // groups 1 and 2 tie
  EXPECT_EQ(Route(c, logits).idx, (std::vector<int32_t>{2, 3}));
}

TEST(Routing, NegativeChoiceScoresInKeptGroupsStillWin) {
  // A bias can push choice scores below zero; masked groups must rank below them (-inf masking,
  // as DeepSeek's reference; masking with 0 would select from an excluded group).
  const Config c = Make("noaux_tc", "sigmoid", 4, 2, 2, 1, true, 1.0);
  const std::vector<float> logits = {0, 0, 0, 0};
  const std::vector<float> bias = {-2, -3, -4, -4};  // group 0 kept (sum -4 vs -7), both negative
  EXPECT_EQ(Route(c, logits, bias).idx, (std::vector<int32_t>{0, 1}));
}

}  // namespace
}  // namespace dsv3
