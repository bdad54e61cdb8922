// `dsv3 train` end to end on a tiny DeepSeek-V3-shaped config and a generated text: the loss
// goes down in every precision, a run stopped and resumed reproduces the uninterrupted run bit
// for bit, the checkpoints load in the inference commands, and bad input ends in one clean error.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/json.h"
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
using test::WriteFile;

std::string Cmd(const std::string& args) { return Dsv3Binary() + " " + args; }

// Short stories from a small vocabulary, deterministic, separated by <|endoftext|> lines.
std::string Stories(int n, uint32_t seed) {
  const char* names[] = {"Tom", "Lily", "Sam", "Mia", "Ben"};
  const char* things[] = {"ball", "cat", "tree", "boat", "cake", "dog"};
  const char* verbs[] = {"saw", "liked", "found", "lost", "made"};
  std::string out;
  uint32_t s = seed;
  auto next = [&](uint32_t m) {
    s = s * 1664525u + 1013904223u;
    return (s >> 8) % m;
  };
  for (int i = 0; i < n; ++i) {
    const char* who = names[next(5)];
    out += fmt::format("Once upon a time, {} {} a {}. ", who, verbs[next(5)], things[next(6)]);
    out += fmt::format("{} was happy. The {} was big and red. ", who, things[next(6)]);
    out +=
        fmt::format("Then {} {} a {} too.\n<|endoftext|>\n", who, verbs[next(5)], things[next(6)]);
  }
  return out;
}

const char* kConfig = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 384, "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64,
  "num_hidden_layers": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1,
  "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 64, "kv_lora_rank": 64,
  "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2,
  "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
  "routed_scaling_factor": 2.5, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-6,
  "rope_theta": 10000, "rope_scaling": null, "max_position_embeddings": 1024,
  "tie_word_embeddings": false, "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 0
})";

class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    WriteFile(*dir_ / "train.txt", Stories(120, 1));
    WriteFile(*dir_ / "valid.txt", Stories(12, 2));
    WriteFile(*dir_ / "config.json", kConfig);
    const RunResult r =
        RunCommand(Cmd("train-tokenizer --data " + (*dir_ / "train.txt") +
                       " --vocab-size 320 --special '<|endoftext|>' -o " + (*dir_ / "tok")));
    ASSERT_EQ(r.status, 0) << r.output();
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string Path(const std::string& name) { return *dir_ / name; }
  // The command line of a run into `out`: the defaults below, with `set` replacing or adding
  // options, and `extra` appended.
  static std::string Train(const std::string& out, const std::string& extra,
                           const std::map<std::string, std::string>& set = {}) {
    std::map<std::string, std::string> o = {{"--config", Path("config.json")},
                                            {"--data", Path("train.txt")},
                                            {"--valid", Path("valid.txt")},
                                            {"--tokenizer", Path("tok")},
                                            {"--batch", "4"},
                                            {"--seq", "32"},
                                            {"--lr", "3e-3"},
                                            {"--warmup", "4"},
                                            {"-t", "2"},
                                            {"-o", out}};
    for (const auto& [k, v] : set) o[k] = v;
    std::string cmd = "train --no-progress";
    for (const auto& [k, v] : o) cmd += " " + k + " " + v;
    return Cmd(cmd + " " + extra);
  }
  // The step lines of a run's log, step -> loss.
  static std::map<int64_t, double> Losses(const std::string& out) {
    std::map<int64_t, double> m;
    std::ifstream in(out + "/train_log.jsonl");
    for (std::string line; std::getline(in, line);) {
      const Json j = Json::parse(line);
      if (j.contains("loss")) m[j["step"].get<int64_t>()] = j["loss"].get<double>();
    }
    return m;
  }
  static TempDir* dir_;
};
TempDir* TrainCli::dir_ = nullptr;

TEST_F(TrainCli, LossFallsInEveryPrecisionAndCheckpointsLoad) {
  for (const std::string precision : {"fp32", "bf16", "fp8"}) {
    SCOPED_TRACE(precision);
    const std::string out = Path("run_" + precision);
    const RunResult r = RunCommand(Train(out, "--steps 40 --precision " + precision));
    ASSERT_EQ(r.status, 0) << r.output();
    const std::map<int64_t, double> loss = Losses(out);
    ASSERT_EQ(loss.size(), 40u);
    // From ln(384) ~ 5.95 (plus lambda * MTP) down: the stories repeat a few dozen words.
    EXPECT_LT(loss.at(40), 0.6 * loss.at(1)) << r.output();
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "train_state.safetensors", "train_log.jsonl"})
      EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
    // The default FP8 checkpoint loads and generates.
    const RunResult g = RunCommand(Cmd("generate -m " + out + " -p 'Once upon a time' --raw -n 8"));
    EXPECT_EQ(g.status, 0) << g.output();
    const Json config = Json::parse(ReadFile(out + "/config.json"));
    EXPECT_TRUE(config.contains("quantization_config"));
  }
}

TEST_F(TrainCli, StoppedAndResumedRunEqualsUninterruptedBitForBit) {
  const std::string a = Path("whole"), b = Path("first_half"), c = Path("resumed");
  const std::string common = "--steps 20 --precision fp8 --save-dtype f32 --eval-every 10";
  RunResult r = RunCommand(Train(a, common));
  ASSERT_EQ(r.status, 0) << r.output();
  r = RunCommand(Train(b, common + " --stop-after 9"));
  ASSERT_EQ(r.status, 0) << r.output();
  r = RunCommand(Train(c, common + " --resume " + b));
  ASSERT_EQ(r.status, 0) << r.output();
  EXPECT_EQ(Losses(a), Losses(c));
  EXPECT_EQ(Losses(b).size(), 9u);
  EXPECT_EQ(ReadFile(a + "/model.safetensors"), ReadFile(c + "/model.safetensors"));
  EXPECT_EQ(ReadFile(a + "/train_state.safetensors"), ReadFile(c + "/train_state.safetensors"));
}

// `dsv3 perplexity` on the saved fp32 checkpoint with -c equal to --seq scores the same windows
// as the trainer's validation: the same mean cross-entropy, from the inference engine's forward
// pass (1e-4 relative: two float32 implementations). The validation record also carries the
// expert load balance of every MoE layer.
TEST_F(TrainCli, PerplexityOfTheCheckpointIsTheValidationLoss) {
  const std::string out = Path("ppl_run");
  RunResult r = RunCommand(Train(out, "--steps 12 --precision fp32 --save-dtype f32"));
  ASSERT_EQ(r.status, 0) << r.output();
  Json last;
  std::ifstream in(out + "/train_log.jsonl");
  for (std::string line; std::getline(in, line);) {
    const Json j = Json::parse(line);
    if (j.contains("valid_ce")) last = j;
  }
  ASSERT_TRUE(last.contains("valid_ce"));
  // Layer 1 (MoE) and the MTP layer (2); max/mean load is at least 1, at most E = 8.
  ASSERT_EQ(last["moe_layers"], Json::parse("[1, 2]"));
  for (double x : last["load_max_over_mean"].get<std::vector<double>>()) {
    EXPECT_GE(x, 1.0);
    EXPECT_LE(x, 8.0);
  }
  const double want = last["valid_ce"].get<double>();
  r = RunCommand(Cmd("perplexity -m " + out + " -f " + Path("valid.txt") +
                     " -c 32 --json --no-progress -t 2"));
  ASSERT_EQ(r.status, 0) << r.output();
  const Json p = Json::parse(r.out);
  EXPECT_NEAR(p["mean_ce"].get<double>(), want, 1e-4 * want) << r.output();
  EXPECT_NEAR(p["perplexity"].get<double>(), std::exp(p["mean_ce"].get<double>()), 1e-9);
  EXPECT_EQ(p["scored_tokens"].get<int64_t>(), p["windows"].get<int64_t>() * 32);
  // The text report, as llama.cpp prints it.
  r = RunCommand(Cmd("perplexity -m " + out + " -f " + Path("valid.txt") + " -c 32 --chunks 2"));
  ASSERT_EQ(r.status, 0) << r.output();
  EXPECT_THAT(r.out, ::testing::HasSubstr("[1]"));
  EXPECT_THAT(r.out, ::testing::HasSubstr("[2]"));
  EXPECT_THAT(r.out, ::testing::Not(::testing::HasSubstr("[3]")));
  EXPECT_THAT(r.out, ::testing::HasSubstr("Final estimate: PPL = "));
  // Bad input: one clean error naming what is wrong.
  TempDir tmp;
  WriteFile(tmp / "short.txt", "Once upon a time");
  ExpectCleanError(RunCommand(Cmd("perplexity -m " + out + " -f " + (tmp / "short.txt"))),
                   {"short.txt", "fewer than one window", "-c"});
  WriteFile(tmp / "bad.txt", std::string("Once upon a time\n\xff there was", 29));
  ExpectCleanError(RunCommand(Cmd("perplexity -m " + out + " -f " + (tmp / "bad.txt"))),
                   {"bad.txt", "UTF-8", "offset 17"});
  ExpectCleanError(RunCommand(Cmd("perplexity -m " + out + " -f " + (tmp / "none.txt"))),
                   "none.txt");
  ExpectCleanError(
      RunCommand(Cmd("perplexity -m " + out + " -f " + Path("valid.txt") + " -c 2000")),
      "max_position_embeddings");
}

TEST_F(TrainCli, BadInputGetsOneCleanError) {
  TempDir tmp;
  WriteFile(tmp / "empty.txt", "");
  ExpectCleanError(RunCommand(Train(tmp / "o1", "--steps 2", {{"--data", tmp / "empty.txt"}})),
                   {"empty.txt", "empty"});
  WriteFile(tmp / "bad.txt", std::string("Once upon a time\n\xff\xfe there was", 30));
  ExpectCleanError(RunCommand(Train(tmp / "o2", "--steps 2", {{"--data", tmp / "bad.txt"}})),
                   {"bad.txt", "UTF-8", "offset 17"});
  // A vocabulary larger than the config's.
  std::string small = kConfig;
  small.replace(small.find("\"vocab_size\": 384"), 17, "\"vocab_size\": 256");
  WriteFile(tmp / "small.json", small);
  ExpectCleanError(RunCommand(Train(tmp / "o3", "--steps 2", {{"--config", tmp / "small.json"}})),
                   {"vocab_size 256", "320 ids"});
  // Resuming with another config or another batch.
  ASSERT_EQ(RunCommand(Train(tmp / "o4", "--steps 4 --stop-after 2")).status, 0);
  std::string wider = kConfig;
  wider.replace(wider.find("\"intermediate_size\": 256"), 24, "\"intermediate_size\": 512");
  WriteFile(tmp / "wider.json", wider);
  ExpectCleanError(RunCommand(Train(tmp / "o5", "--steps 4 --resume " + (tmp / "o4"),
                                    {{"--config", tmp / "wider.json"}})),
                   {"train_state.safetensors", "intermediate_size"});
  ExpectCleanError(
      RunCommand(Train(tmp / "o6", "--steps 4 --resume " + (tmp / "o4"), {{"--batch", "2"}})),
      {"train_state.safetensors", "batch"});
  ExpectCleanError(RunCommand(Train(tmp / "o7", "--steps 0")), "--steps");
  ExpectCleanError(RunCommand(Train(tmp / "o9", "--steps 2", {{"--seq", "2048"}})),
                   {"--seq 2048", "max_position_embeddings 1024"});
  std::string deep = kConfig;
  deep.replace(deep.find("\"num_nextn_predict_layers\": 1"), 29, "\"num_nextn_predict_layers\": 2");
  WriteFile(tmp / "deep.json", deep);
  ExpectCleanError(RunCommand(Train(tmp / "o10", "--steps 2", {{"--config", tmp / "deep.json"}})),
                   "num_nextn_predict_layers 2");
  ExpectCleanError(RunCommand(Train(tmp / "o8", "--steps 4 --resume " + (tmp / "nothing"))),
                   "nothing");
}

}  // namespace
}  // namespace dsv3
