// config.json parsing: the real published configs, defaults, and errors that name the field.
#include "model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "model/model_info.h"
#include "model/rope.h"
#include "model/tensor_specs.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

using ::testing::HasSubstr;

Json V3() { return ReadJsonFile(test::TestData("configs/deepseek-v3.json"), 1 << 20); }

std::string ErrorOf(const Json& j) {
  try {
    Config::FromJson(j, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Config, DeepSeekV3) {
  DSV3_REQUIRE_DATA(test::TestData("configs/deepseek-v3.json"));
  const Config c = Config::FromJson(V3(), "v3");
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(c.quant_block_rows, 128);
  EXPECT_FALSE(c.IsMoeLayer(2));
  EXPECT_TRUE(c.IsMoeLayer(3));
  EXPECT_TRUE(c.IsMoeLayer(60));
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{1});
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 4096);
}

TEST(Config, PaperFiguresForV3) {
  DSV3_REQUIRE_DATA(test::TestData("configs/deepseek-v3.json"));
  const Config c = Config::FromJson(V3(), "v3");
  // deepseek-architecture.md: 70,272 bytes per token in BF16; 671.0 B parameters without MTP;
  // about 36.6 B activated without the input embedding, 37.6 B with it.
  EXPECT_EQ(KvBytesPerToken(c, 2), 70272);
  const ParamCounts p = CountParams(c);
  EXPECT_NEAR(p.total / 1e9, 671.0, 0.05);
  EXPECT_NEAR(p.activated / 1e9, 36.6, 0.05);
  EXPECT_NEAR(p.activated_with_embedding / 1e9, 37.6, 0.05);
  EXPECT_GT(p.mtp, 0);
}

TEST(Config, DeepSeekV2Lite) {
  DSV3_REQUIRE_DATA(test::TestData("configs/deepseek-v2-lite.json"));
  const Config c = Config::FromJson(
      ReadJsonFile(test::TestData("configs/deepseek-v2-lite.json"), 1 << 20), "v2l");
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.quant_block_rows, 0);
  // 15.7 B total, 2.4 B activated (DeepSeek-V2 paper, Lite model card).
  const ParamCounts p = CountParams(c);
  EXPECT_NEAR(p.total / 1e9, 15.7, 0.05);
  EXPECT_NEAR(p.activated / 1e9, 2.4, 0.06);  // 2.45 B: input embedding excluded, as for V3
  // softmax scale with mscale_all_dim 0.707 and factor 40
  const RopeTable r = ComputeRope(c);
  const double m = 0.1 * 0.707 * std::log(40.0) + 1;
  EXPECT_NEAR(r.softmax_scale, m * m / std::sqrt(192.0), 1e-7);
}

TEST(Config, MoeLayerPattern) {
  Json j = ParseJson(
      R"({"model_type":"deepseek_v2","vocab_size":10,"hidden_size":8,"num_hidden_layers":6,
    "num_attention_heads":2,"intermediate_size":16,"kv_lora_rank":4,"qk_nope_head_dim":2,
    "qk_rope_head_dim":2,"v_head_dim":2,"max_position_embeddings":64,"n_routed_experts":4,
    "moe_intermediate_size":4,"num_experts_per_tok":2,"first_k_dense_replace":1,"moe_layer_freq":2})",
      "t");
  const Config c = Config::FromJson(j, "t");
  std::vector<bool> moe;
  for (int l = 0; l < 6; ++l) moe.push_back(c.IsMoeLayer(l));
  EXPECT_EQ(moe, (std::vector<bool>{false, false, true, false, true, false}));
  j["n_routed_experts"] = nullptr;  // V2 configs may describe a dense model
  const Config dense = Config::FromJson(j, "t");
  EXPECT_FALSE(dense.IsMoeLayer(2));
  EXPECT_EQ(MainTensorSpecs(dense).size(), 1 + 6 * 10 + 2u);
}

TEST(Config, ErrorsNameTheField) {
  DSV3_REQUIRE_DATA(test::TestData("configs/deepseek-v3.json"));
  auto with = [](const char* field, const Json& value) {
    Json j = V3();
    j[field] = value;
    return ErrorOf(j);
  };
  EXPECT_THAT(with("topk_method", "gready"), HasSubstr("field 'topk_method' is 'gready'"));
  EXPECT_THAT(with("scoring_func", "relu"), HasSubstr("'scoring_func'"));
  EXPECT_THAT(with("model_type", "llama"), HasSubstr("'model_type' is 'llama'"));
  EXPECT_THAT(with("hidden_size", "big"), HasSubstr("field 'hidden_size' must be an integer"));
  EXPECT_THAT(with("hidden_size", -3), HasSubstr("'hidden_size'"));
  EXPECT_THAT(with("qk_rope_head_dim", 63), HasSubstr("'qk_rope_head_dim'"));
  EXPECT_THAT(with("hidden_act", "gelu"), HasSubstr("'hidden_act'"));
  EXPECT_THAT(with("n_group", 7), HasSubstr("multiple of n_group"));
  EXPECT_THAT(with("topk_group", 9), HasSubstr("'topk_group'"));
  EXPECT_THAT(with("num_experts_per_tok", 300), HasSubstr("'num_experts_per_tok'"));
  EXPECT_THAT(with("rope_scaling", Json{{"type", "linear"}, {"factor", 2}}),
              HasSubstr("rope_scaling type 'linear'"));
  EXPECT_THAT(with("quantization_config", Json{{"quant_method", "awq"}}),
              HasSubstr("quant_method 'awq'"));
  EXPECT_THAT(
      with("quantization_config", Json{{"quant_method", "fp8"}, {"weight_block_size", {128}}}),
      HasSubstr("weight_block_size"));
  EXPECT_THAT(with("eos_token_id", 999999), HasSubstr("'eos_token_id'"));
  EXPECT_THAT(with("attention_bias", true), HasSubstr("'attention_bias'"));
  Json j = V3();
  j.erase("hidden_size");
  EXPECT_THAT(ErrorOf(j), HasSubstr("required field 'hidden_size' is missing"));
  EXPECT_THAT(ErrorOf(Json::array()), HasSubstr("expected a JSON object"));
}

TEST(Config, LoadNamesTheMissingFile) {
  test::TempDir dir;
  try {
    Config::Load(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr(dir / "config.json"));
  }
}

TEST(Config, LimitsOnUntrustedFiles) {
  test::TempDir dir;
  auto load_error = [&] {
    try {
      Config::Load(dir.path());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Size: checked before anything is read (a sparse file of the limit + 1 bytes).
  test::WriteFile(dir / "config.json", "{}");
  std::filesystem::resize_file(dir / "config.json", kMaxConfigJsonBytes + 1);
  EXPECT_THAT(load_error(), HasSubstr(dir / "config.json"));
  EXPECT_THAT(load_error(), HasSubstr("16777217 bytes, more than the limit of 16777216 bytes"));
  // Depth: checked before the recursive parser runs.
  test::WriteFile(dir / "config.json",
                  "{\"model_type\": " + std::string(65, '[') + std::string(65, ']') + "}");
  EXPECT_THAT(load_error(), HasSubstr("JSON nested deeper than 64 levels"));
  test::WriteFile(dir / "config.json",
                  "{\"model_type\": " + std::string(63, '[') + std::string(63, ']') + "}");
  EXPECT_THAT(load_error(), HasSubstr("field 'model_type' must be a string"));
}

TEST(Rope, PlainAndScaledVariants) {
  Json j = ParseJson(
      R"({"model_type":"deepseek_v3","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,
    "num_attention_heads":2,"intermediate_size":16,"kv_lora_rank":4,"qk_nope_head_dim":12,
    "qk_rope_head_dim":4,"v_head_dim":2,"max_position_embeddings":64,"rope_theta":100})",
      "t");
  RopeTable r = ComputeRope(Config::FromJson(j, "t"));
  EXPECT_FLOAT_EQ(r.inv_freq[0], 1.0f);
  EXPECT_FLOAT_EQ(r.inv_freq[1], 0.1f);     // 100^(-2/4)
  EXPECT_FLOAT_EQ(r.softmax_scale, 0.25f);  // (12 + 4)^-0.5
  float cos[2], sin[2];
  r.Angles(3, cos, sin);
  EXPECT_FLOAT_EQ(cos[1], std::cos(0.3f));
  EXPECT_FLOAT_EQ(sin[1], std::sin(0.3f));
  // HF semantics: without mscale_all_dim there is no m^2 on the softmax scale, and cos/sin carry
  // m(mscale) / m(0) = m(mscale).
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 16}};
  r = ComputeRope(Config::FromJson(j, "t"));
  EXPECT_FLOAT_EQ(r.softmax_scale, 0.25f);
  EXPECT_NEAR(r.cos_sin_scale, 0.1 * std::log(4.0) + 1, 1e-6);
  j["rope_scaling"]["mscale_all_dim"] = 1.0;
  r = ComputeRope(Config::FromJson(j, "t"));
  EXPECT_NEAR(r.softmax_scale, 0.25 * std::pow(0.1 * std::log(4.0) + 1, 2), 1e-6);
  EXPECT_FLOAT_EQ(r.cos_sin_scale, 1.0f);
}

}  // namespace
}  // namespace dsv3
