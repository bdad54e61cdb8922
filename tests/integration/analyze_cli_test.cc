// `dsv3 analyze` end to end: the JSON and text reports on the published configs, agreement with
// `dsv3 info` on real-format checkpoints, the tpot / mtp / network subcommands, the plot, and bad
// input ending in one error line and exit status 1.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/json.h"
#include "io/safetensors.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using test::Dsv3Binary;
using test::ExpectCleanError;
using test::ReadFile;
using test::RunCommand;
using test::RunResult;
using test::TempDir;
using test::TestData;
using test::WriteFile;

std::string Cmd(const std::string& args) { return Dsv3Binary() + " " + args; }

Json RunJson(const std::string& args) {
  const RunResult r = RunCommand(Cmd(args));
  EXPECT_EQ(r.status, 0) << r.output();
  return r.status == 0 ? Json::parse(r.out) : Json();
}

int64_t Field(const Json& config, const char* name) { return config[name].get<int64_t>(); }

const std::string kV3 = "configs/deepseek-v3.json";
const std::string kQwen = "configs/qwen2.5-72b.json";
const std::string kLite = "configs/deepseek-v2-lite.json";

TEST(AnalyzeCli, JsonOnThePublishedConfigs) {
  for (const std::string& rel : {kV3, kQwen, kLite}) DSV3_REQUIRE_DATA(TestData(rel));
  const Json j = RunJson("analyze " + TestData(kV3) + " " + TestData(kQwen) + " " +
                         TestData(kLite) + " --seq-len 4096 --context 32768 --batch 2 --json");
  ASSERT_EQ(j["configs"].size(), 3u);
  // KV per token from the config fields, by the textbook formulas.
  const Json v3c = ReadJsonFile(TestData(kV3), 1 << 20);
  const Json qc = ReadJsonFile(TestData(kQwen), 1 << 20);
  const int64_t v3_kv = Field(v3c, "num_hidden_layers") *
                        (Field(v3c, "kv_lora_rank") + Field(v3c, "qk_rope_head_dim")) * 2;
  const int64_t qwen_kv = 2 * Field(qc, "num_hidden_layers") * Field(qc, "num_key_value_heads") *
                          (Field(qc, "hidden_size") / Field(qc, "num_attention_heads")) * 2;
  const Json& v3 = j["configs"][0];
  const Json& qwen = j["configs"][1];
  EXPECT_EQ(v3["kv_cache_bytes_per_token"], v3_kv);
  EXPECT_EQ(v3["kv_cache_bytes_per_token"], 70272);  // the paper's Table 1
  EXPECT_EQ(qwen["kv_cache_bytes_per_token"], qwen_kv);
  EXPECT_EQ(qwen["kv_cache_bytes_per_token"], 327680);
  EXPECT_EQ(v3["kv_cache"]["bytes_per_token"]["fp8"], v3_kv / 2);
  EXPECT_EQ(v3["kv_cache"]["bytes"]["bf16"], v3_kv * 32768 * 2);
  EXPECT_EQ(qwen["kv_cache"]["bytes"]["bf16"], qwen_kv * 32768 * 2);
  EXPECT_NEAR(v3["params_total"].get<double>() / 1e9, 671.03, 0.005);
  EXPECT_NEAR(v3["params_activated"].get<double>() / 1e9, 36.63, 0.005);
  EXPECT_NEAR(v3["train_flops_per_token"].get<double>() / 1e9, 250.46, 0.005);
  EXPECT_EQ(std::lround(qwen["train_flops"]["paper_dense_approximation"].get<double>() / 1e9), 394);
  EXPECT_NEAR(j["configs"][2]["params_total"].get<double>() / 1e9, 15.7, 0.05);
  EXPECT_NEAR(j["configs"][2]["params_activated"].get<double>() / 1e9, 2.45, 0.005);
  for (const Json& c : j["configs"]) {
    EXPECT_TRUE(c.contains("decode_flops_per_token"));
    EXPECT_EQ(c["weights"]["bf16"]["bytes_total"].get<int64_t>() / 2,
              c["params_total"].get<int64_t>() +
                  (c["model_type"] == "deepseek_v3" ? 58 * 256 : 0))  // float32 routing bias
        << c["name"];
  }
}

TEST(AnalyzeCli, TablesOneAndTwoSideBySide) {
  for (const std::string& rel : {kV3, kQwen}) DSV3_REQUIRE_DATA(TestData(rel));
  const RunResult r = RunCommand(Cmd("analyze " + TestData(kV3) + " " + TestData(kQwen)));
  ASSERT_EQ(r.status, 0) << r.output();
  for (const char* want : {"deepseek-v3", "qwen2.5-72b", "70,272", "327,680", "4.66x", "250.46",
                           "444.87", "394.02", "671.03 B", "36.63 B"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
  // One config: the working is shown.
  const RunResult one = RunCommand(Cmd("analyze " + TestData(kV3) + " --machine h800"));
  ASSERT_EQ(one.status, 0) << one.output();
  for (const char* want : {"70,272 B (bf16) = 61 layers x (512 + 64) values x 2 B",
                           "paper's approximation", "tokens/s", "MTP"}) {
    EXPECT_NE(one.out.find(want), std::string::npos) << want << "\n" << one.out;
  }
}

// Bytes of the stored tensors one decoded token reads, from the safetensors headers: every
// main-model tensor (scales included) but the embedding table, of which one row, and the routed
// experts beyond the first num_experts_per_tok of each layer (all experts have the same shape).
uint64_t StoredBytesPerToken(const std::string& dir) {
  const Json config = ReadJsonFile(dir + "/config.json", 1 << 20);
  const int64_t layers = Field(config, "num_hidden_layers");
  const int64_t k =
      config.contains("num_experts_per_tok") ? Field(config, "num_experts_per_tok") : 0;
  const Checkpoint ckpt(dir);
  uint64_t bytes = 0;
  for (const TensorInfo* t : ckpt.tensors()) {
    const std::string& name = t->name;
    if (name == "model.embed_tokens.weight") {
      bytes += t->nbytes / Field(config, "vocab_size");
      continue;
    }
    const std::string layer_prefix = "model.layers.";
    if (name.rfind(layer_prefix, 0) == 0 &&
        std::stoll(name.substr(layer_prefix.size())) >= layers) {
      continue;  // an MTP module
    }
    const std::string experts = ".mlp.experts.";
    const size_t at = name.find(experts);
    if (at != std::string::npos && std::stoll(name.substr(at + experts.size())) >= k) continue;
    bytes += t->nbytes;
  }
  return bytes;
}

// `dsv3 info` reads the checkpoint; `dsv3 analyze` only its config.json. They must agree.
void ExpectInfoAgrees(const std::string& dir) {
  const Json info = RunJson("info -m " + dir + " --json");
  const Json j = RunJson("analyze " + dir + " --json");
  ASSERT_EQ(j["configs"].size(), 1u);
  const Json& a = j["configs"][0];
  EXPECT_EQ(a["params_total"], info["parameters"]["total"]) << dir;
  EXPECT_EQ(a["params_activated"], info["parameters"]["activated"]) << dir;
  EXPECT_EQ(a["params_activated_with_embedding"], info["parameters"]["activated_with_embedding"]);
  EXPECT_EQ(a["kv_cache_bytes_per_token"], info["kv_cache"]["bytes_per_token_bf16"]) << dir;
  EXPECT_EQ(a["kv_cache"]["bytes_per_token"]["f32"], info["kv_cache"]["bytes_per_token"]) << dir;
  // Weight bytes predicted from the config equal the bytes in the safetensors files.
  const Json& stored = a["weights"][a["weights"]["stored_format"].get<std::string>()];
  EXPECT_EQ(stored["bytes_total"], info["weights"]["bytes_main"]) << dir;
  EXPECT_EQ(stored["bytes_per_token"], StoredBytesPerToken(dir)) << dir;
  EXPECT_EQ(stored["bytes_mtp"], info["weights"]["bytes_mtp"]) << dir;
  if (info["layers"]["mtp"] > 0) {
    EXPECT_EQ(a["mtp"]["params_stored"], info["parameters"]["mtp"]);
  }
}

TEST(AnalyzeCli, AgreesWithInfoOnTheTestModels) {
  for (const char* model : {"models/v3-tiny", "models/v2lite-tiny"}) {
    const std::string dir = TestData(model);
    DSV3_REQUIRE_DATA(dir);
    ExpectInfoAgrees(dir);
  }
}

TEST(AnalyzeCli, AgreesWithInfoOnSynthesizedCheckpoints) {
  TempDir tmp;
  for (const char* dtype : {"fp8", "bf16"}) {
    const std::string out = tmp / dtype;
    const RunResult r = RunCommand(
        Cmd(std::string("synth --no-progress --preset tiny --set num_hidden_layers=4 --dtype ") +
            dtype + " -o " + out));
    ASSERT_EQ(r.status, 0) << r.output();
    ExpectInfoAgrees(out);
  }
}

TEST(AnalyzeCli, Tpot) {
  DSV3_REQUIRE_DATA(TestData(kV3));
  Json j = RunJson("analyze tpot " + TestData(kV3) + " --hidden 7000 --json");
  EXPECT_NEAR(j["comm_us_per_round"].get<double>(), 120.96, 1e-9);
  EXPECT_NEAR(j["tpot_ms"].get<double>(), 14.76, 0.005);
  EXPECT_EQ(std::floor(j["tokens_per_s"].get<double>()), 67);
  EXPECT_EQ(j["fan_out"], 9);
  j = RunJson("analyze tpot " + TestData(kV3) + " --hidden 7000 --preset nvl72 --json");
  EXPECT_NEAR(j["comm_us_per_round"].get<double>(), 6.72, 1e-9);
  EXPECT_NEAR(j["tpot_ms"].get<double>(), 0.82, 0.005);
  // Without a config, every input given: 2 x (1 + 2) x 10 x 4 x 100 B / 1 GB/s per layer.
  j = RunJson(
      "analyze tpot --hidden 100 --fan-out 4 --layers 5 --tokens-per-device 10 "
      "--bandwidth-gbs 1 --json");
  EXPECT_NEAR(j["comm_us_per_round"].get<double>(), 12000.0 / 1e9 * 1e6, 1e-9);
  EXPECT_NEAR(j["tpot_ms"].get<double>(), 5 * 2 * 12.0 / 1e3, 1e-12);
  const RunResult text = RunCommand(Cmd("analyze tpot " + TestData(kV3) + " --hidden 7000"));
  EXPECT_NE(text.out.find("14.76 ms"), std::string::npos) << text.output();
}

TEST(AnalyzeCli, Network) {
  const Json j = RunJson("analyze network --radix 64 --dragonfly-g 511 --json");
  const Json& t = j["topologies"];
  EXPECT_EQ(t["ft2"]["endpoints"], 2048);
  EXPECT_EQ(t["ft2"]["switches"], 96);
  EXPECT_EQ(t["ft2"]["links"], 2048);
  EXPECT_EQ(t["mpft"]["endpoints"], 16384);
  EXPECT_EQ(t["mpft"]["switches"], 768);
  EXPECT_EQ(t["mpft"]["links"], 16384);
  EXPECT_EQ(t["ft3"]["endpoints"], 65536);
  EXPECT_EQ(t["ft3"]["switches"], 5120);
  EXPECT_EQ(t["ft3"]["links"], 131072);
  EXPECT_EQ(t["slim_fly"]["endpoints"], 32928);
  EXPECT_EQ(t["slim_fly"]["switches"], 1568);
  EXPECT_EQ(t["slim_fly"]["links"], 32928);
  EXPECT_EQ(t["dragonfly"]["endpoints"], 261632);
  EXPECT_EQ(t["dragonfly"]["switches"], 16352);
  EXPECT_EQ(t["dragonfly"]["links"], 384272);
  // Cost from unit prices: FT2 of 8-port switches, 12 x 100 + 32 x 10 + 32 x 1.
  const Json c = RunJson(
      "analyze network --radix 8 --switch-price 100 --link-price 10 --endpoint-price 1 --json");
  EXPECT_DOUBLE_EQ(c["topologies"]["ft2"]["cost_usd"].get<double>(), 1552);
  EXPECT_DOUBLE_EQ(c["topologies"]["ft2"]["cost_per_endpoint_usd"].get<double>(), 1552.0 / 32);
  const RunResult text = RunCommand(Cmd("analyze network"));
  EXPECT_EQ(text.status, 0);
  EXPECT_NE(text.out.find("131,072"), std::string::npos) << text.out;
}

TEST(AnalyzeCli, Mtp) {
  const Json j = RunJson("analyze mtp --acceptance 0.8 --draft-cost 0.1 --depth 2 --json");
  EXPECT_DOUBLE_EQ(j["tokens_per_step"].get<double>(), 1 + 0.8 + 0.64);
  EXPECT_DOUBLE_EQ(j["speedup"].get<double>(), (1 + 0.8 + 0.64) / 1.2);
  DSV3_REQUIRE_DATA(TestData(kV3));
  const Json v3 = RunJson("analyze mtp " + TestData(kV3) + " --json");
  EXPECT_EQ(v3["depth"], 1);
  EXPECT_TRUE(v3["draft_cost_estimated"].get<bool>());
  EXPECT_NEAR(v3["speedup"].get<double>(), 1.8, 0.1);
}

TEST(AnalyzeCli, PlotKvCacheAgainstContext) {
  for (const std::string& rel : {kV3, kQwen, kLite}) DSV3_REQUIRE_DATA(TestData(rel));
  if (RunCommand("command -v gnuplot").status != 0) {
    if (std::getenv("CI") != nullptr) FAIL() << "gnuplot missing on CI (scripts/setup.sh)";
    GTEST_SKIP() << "gnuplot not installed (scripts/setup.sh installs gnuplot-nox)";
  }
  TempDir tmp;
  const std::string configs = TestData(kV3) + " " + TestData(kQwen) + " " + TestData(kLite);
  RunResult r = RunCommand(Cmd("analyze " + configs + " --plot " + (tmp / "kv.svg")));
  ASSERT_EQ(r.status, 0) << r.output();
  const std::string svg = ReadFile(tmp / "kv.svg");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u) << svg.substr(0, 100);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("qwen2.5-72b"), std::string::npos);  // the legend
  EXPECT_FALSE(fs::exists(tmp / "kv.svg.tmp"));
  r = RunCommand(Cmd("analyze " + configs + " --plot " + (tmp / "kv.png") + " --json"));
  ASSERT_EQ(r.status, 0) << r.output();
  EXPECT_NO_THROW(Json::parse(r.out));  // the plot does not disturb the JSON on stdout
  const std::string png = ReadFile(tmp / "kv.png");
  EXPECT_GT(png.size(), 1000u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

// ---- bad input ---------------------------------------------------------------------------------

class AnalyzeBadInput : public ::testing::Test {
 protected:
  // A Llama config with one field changed (null removes it).
  std::string Config(const std::string& key, const Json& value) {
    Json c = {{"model_type", "llama"},    {"hidden_size", 64},        {"num_hidden_layers", 2},
              {"num_attention_heads", 4}, {"intermediate_size", 128}, {"vocab_size", 100}};
    if (value.is_null()) {
      c.erase(key);
    } else {
      c[key] = value;
    }
    const std::string path = tmp_ / (key + ".json");
    WriteFile(path, c.dump());
    return path;
  }
  RunResult Analyze(const std::string& args) { return RunCommand(Cmd("analyze " + args)); }
  TempDir tmp_;
};

TEST_F(AnalyzeBadInput, UnsupportedFamily) {
  ExpectCleanError(Analyze(Config("model_type", "gpt2")), "'model_type' is 'gpt2'");
}

TEST_F(AnalyzeBadInput, MissingFields) {
  ExpectCleanError(Analyze(Config("vocab_size", nullptr)), "'vocab_size' is missing");
  ExpectCleanError(Analyze(Config("model_type", nullptr)), "'model_type' is missing");
}

TEST_F(AnalyzeBadInput, NonsenseValues) {
  ExpectCleanError(Analyze(Config("num_hidden_layers", -2)), "'num_hidden_layers' must be");
  ExpectCleanError(Analyze(Config("num_attention_heads", 0)), "'num_attention_heads' must be");
  ExpectCleanError(Analyze(Config("hidden_size", 1.5)), "'hidden_size' must be");
  WriteFile(tmp_ / "broken.json", "{\"model_type\": \"llama\",");
  ExpectCleanError(Analyze(tmp_ / "broken.json"), "invalid JSON");
}

TEST_F(AnalyzeBadInput, MissingFiles) {
  ExpectCleanError(Analyze("/nonexistent/config.json"), "/nonexistent/config.json");
  ExpectCleanError(Analyze(tmp_.path()), "config.json: missing");
  ExpectCleanError(Analyze(""), "give one or more");
}

TEST_F(AnalyzeBadInput, BadOptions) {
  const std::string ok = Config("vocab_size", 100);
  ExpectCleanError(Analyze(ok + " --context 0"), "--context");
  ExpectCleanError(Analyze(ok + " --seq-len -5"), "--seq-len");
  ExpectCleanError(Analyze(ok + " --machine abacus"), "--machine 'abacus'");
  ExpectCleanError(Analyze(ok + " --tflops 10"), "--tflops needs");
  ExpectCleanError(Analyze(ok + " --bandwidth-gbs 0"), "--bandwidth-gbs");
  ExpectCleanError(Analyze(ok + " --weights fp4 --machine h800"), "'fp4'");
  ExpectCleanError(Analyze(ok + " --kv-dtype int2"), "'int2'");
  ExpectCleanError(Analyze(ok + " --plot " + (tmp_ / "kv.pdf")), ".svg or .png");
  ExpectCleanError(Analyze("tpot " + ok), "dense model");
  ExpectCleanError(Analyze("tpot --hidden 7000"), "--fan-out");
  ExpectCleanError(Analyze("tpot --hidden 1 --fan-out 1 --layers 1 --preset ib-800"), "'ib-800'");
  ExpectCleanError(Analyze("tpot --hidden -1 --fan-out 1 --layers 1"), "--hidden");
  ExpectCleanError(Analyze("network --radix 63"), "even");
  ExpectCleanError(Analyze("network --dragonfly-g 9999"), "--dragonfly-g");
  ExpectCleanError(Analyze("mtp"), "--draft-cost");
  ExpectCleanError(Analyze("mtp " + ok), "no MTP modules");
  ExpectCleanError(Analyze("mtp --draft-cost 0.1 --acceptance 2"), "--acceptance");
}

}  // namespace
}  // namespace dsv3
