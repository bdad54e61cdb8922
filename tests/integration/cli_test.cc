// The dsv3 command line end to end: commands on the reference checkpoints, synthetic checkpoints
// written and read back, and every kind of bad input ending in a one-line error and exit status 1.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/json.h"
#include "io/safetensors.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using test::Dsv3Binary;
using test::ExpectCleanError;
using test::ReadFile;
using test::Reference;
using test::RunCommand;
using test::RunResult;
using test::TempDir;
using test::TestData;
using test::WriteFile;
using ::testing::HasSubstr;

std::string Cmd(const std::string& args) { return Dsv3Binary() + " " + args; }

std::string Join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

// A writable copy of a reference model (config + safetensors, no reference outputs).
void CopyModel(const std::string& from, const std::string& to) {
  for (const auto& e : fs::directory_iterator(from)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("reference", 0) == 0) continue;
    fs::copy_file(e.path(), fs::path(to) / name);
  }
}

// Rewrites a safetensors header in place (the data section is kept byte for byte).
void PatchHeader(const std::string& path, const std::function<void(Json&)>& patch) {
  const std::string bytes = ReadFile(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  Json header = Json::parse(bytes.substr(8, n));
  patch(header);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  WriteFile(path, out + text + bytes.substr(8 + n));
}

std::vector<float> ReadFloats(const std::string& path) {
  const std::string bytes = ReadFile(path);
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = a.size() == b.size() ? 0 : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

const std::string kV3Tiny = "models/v3-tiny";

TEST(Cli, InfoReportsKvBytesPerToken) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  const RunResult r = RunCommand(Cmd("info -m " + dir + " --json"));
  ASSERT_EQ(r.status, 0) << r.output();
  const Json info = Json::parse(r.out);
  const Json config = ReadJsonFile(dir + "/config.json", 1 << 20);
  const int64_t expected =
      config["num_hidden_layers"].get<int64_t>() *
      (config["kv_lora_rank"].get<int64_t>() + config["qk_rope_head_dim"].get<int64_t>()) * 4;
  EXPECT_EQ(info["kv_cache"]["bytes_per_token"], expected);
  EXPECT_EQ(info["kv_cache"]["bytes_per_token_bf16"], expected / 2);
  EXPECT_EQ(info["layers"]["mtp"], 1);
  EXPECT_TRUE(info["unused_tensors"].empty());
  EXPECT_GT(info["parameters"]["total"].get<int64_t>(),
            info["parameters"]["activated"].get<int64_t>());
  const RunResult text = RunCommand(Cmd("info -m " + dir));
  EXPECT_EQ(text.status, 0);
  EXPECT_THAT(text.output(), HasSubstr(std::to_string(expected) + " bytes per token"));
}

TEST(Cli, LogitsAndGenerateMatchTheReference) {
  for (const std::string model : {"models/v3-tiny", "models/v2lite-tiny"}) {
    const std::string dir = TestData(model);
    DSV3_REQUIRE_DATA(dir);
    const Reference ref(dir);
    TempDir tmp;
    for (const Json& seq : ref.json()["sequences"]) {
      if (seq["length"] != 7 && seq["length"] != 33) continue;
      const std::string ids = Join(seq["tokens"].get<std::vector<int32_t>>());
      for (const char* mode : {"", " --decode"}) {
        const RunResult r =
            RunCommand(Cmd("logits -m " + dir + " --ids " + ids + " -o " + (tmp / "l.bin") + mode));
        ASSERT_EQ(r.status, 0) << r.output();
        const std::vector<float> want = ref.F32(seq[*mode ? "decode_logits" : "prefill_logits"]);
        EXPECT_LE(MaxAbsDiff(ReadFloats(tmp / "l.bin"), want), 1e-4f) << model << mode;
      }
      const RunResult mtp = RunCommand(
          Cmd("logits -m " + dir + " --ids " + ids + " -o " + (tmp / "m.bin") + " --mtp"));
      if (seq.contains("mtp")) {
        ASSERT_EQ(mtp.status, 0) << mtp.output();
        EXPECT_LE(MaxAbsDiff(ReadFloats(tmp / "m.bin"), ref.F32(seq["mtp"]["logits"])), 1e-4f);
      } else {
        ExpectCleanError(mtp, "no MTP module");
      }
      const RunResult g =
          RunCommand(Cmd("generate -m " + dir + " --ids " + ids + " -n 32 --ignore-eos"));
      ASSERT_EQ(g.status, 0) << g.output();
      EXPECT_EQ(g.out, Join(seq["greedy"]["new_tokens"].get<std::vector<int32_t>>()) + "\n");
    }
  }
}

TEST(Cli, GenerateReportsSpeedAndKvBytes) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  const RunResult r = RunCommand(Cmd(
      "generate -m " + dir + " --ids 5,6,7 -n 4 --temp 0.8 --top-p 0.9 --top-k 40 --seed 3 -t 1"));
  ASSERT_EQ(r.status, 0) << r.output();
  EXPECT_THAT(r.output(), HasSubstr("tokens/s"));
  EXPECT_THAT(r.output(), HasSubstr("KV cache 960 bytes/token"));
}

// generate --json: the same greedy ids as the streamed output, with the statistics and the MTP
// drafts counted (v3-tiny has an MTP layer; --no-mtp leaves the field out).
TEST(Cli, GenerateJsonHasTheIdsAndTheStatistics) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  const Reference ref(dir);
  for (const Json& seq : ref.json()["sequences"]) {
    if (seq["length"] != 7) continue;
    const std::string ids = Join(seq["tokens"].get<std::vector<int32_t>>());
    const RunResult r =
        RunCommand(Cmd("generate -m " + dir + " --ids " + ids + " -n 32 --ignore-eos --json -t 1"));
    ASSERT_EQ(r.status, 0) << r.output();
    const Json j = Json::parse(r.out);
    EXPECT_EQ(j["ids"], seq["greedy"]["new_tokens"]);
    EXPECT_EQ(j["prompt_tokens"], 7);
    EXPECT_EQ(j["new_tokens"], 32);
    EXPECT_EQ(j["kv_cache_bytes_per_token"], 960);
    ASSERT_TRUE(j.contains("mtp")) << r.out;
    EXPECT_EQ(j["mtp"]["draft"], 1);
    const int64_t checked = j["mtp"]["drafts_checked"][0],
                  accepted = j["mtp"]["drafts_accepted"][0];
    EXPECT_GT(checked, 0);
    EXPECT_LE(accepted, checked);
    const int64_t steps = j["decode_steps"], decoded = j["decode_tokens"];
    EXPECT_EQ(decoded, 31);  // the first new token comes from the prompt's pass
    EXPECT_NEAR(j["mtp"]["tokens_per_main_step"].get<double>(),
                static_cast<double>(decoded) / static_cast<double>(steps), 1e-12);
    const RunResult plain = RunCommand(
        Cmd("generate -m " + dir + " --ids " + ids + " -n 32 --ignore-eos --json --no-mtp -t 1"));
    ASSERT_EQ(plain.status, 0) << plain.output();
    const Json p = Json::parse(plain.out);
    EXPECT_EQ(p["ids"], j["ids"]);
    EXPECT_FALSE(p.contains("mtp"));
    EXPECT_EQ(p["decode_steps"], 31);
  }
}

TEST(Cli, BenchReportsSpeedAndTheMtpRun) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  const RunResult r = RunCommand(Cmd("bench -m " + dir + " -p 16 -n 8 -t 1 --draft 2 --json"));
  ASSERT_EQ(r.status, 0) << r.output();
  const Json j = Json::parse(r.out)["runs"][0];
  EXPECT_EQ(j["threads"], 1);
  EXPECT_EQ(j["prefill"]["tokens"], 16);
  EXPECT_EQ(j["decode"]["tokens"], 8);
  EXPECT_EQ(j["kv_bytes_per_token"], 960);
  EXPECT_GT(j["weight_bytes_per_token"].get<double>(), 0);
  EXPECT_GT(j["decode"]["tokens_per_second"].get<double>(), 0);
  const Json& mtp = j["mtp"];
  EXPECT_EQ(mtp["draft"], 2);
  ASSERT_EQ(mtp["acceptance_by_position"].size(), 2u);
  for (const Json& a : mtp["acceptance_by_position"]) {
    EXPECT_GE(a.get<double>(), 0);
    EXPECT_LE(a.get<double>(), 1);
  }
  // Each main step emits its own token plus at most every draft.
  EXPECT_GE(mtp["tokens_per_step"].get<double>(), 1);
  EXPECT_LE(mtp["tokens_per_step"].get<double>(), 3);
  EXPECT_EQ(mtp["plain_decode_tokens_per_second"], j["decode"]["tokens_per_second"]);
  ASSERT_EQ(mtp["verify_cost_by_tokens"].size(), 2u);
  EXPECT_GT(mtp["verify_cost_by_tokens"][0].get<double>(), 0);
  EXPECT_GT(mtp["draft_cost"].get<double>(), 0);
  EXPECT_GT(mtp["projected_speedup_at_acceptance_0.85_by_draft"]["2"].get<double>(), 0);

  // --no-mtp, and a checkpoint without MTP modules: no speculative run.
  const RunResult off = RunCommand(Cmd("bench -m " + dir + " -p 4 -n 2 -t 1 --no-mtp --json"));
  ASSERT_EQ(off.status, 0) << off.output();
  EXPECT_FALSE(Json::parse(off.out)["runs"][0].contains("mtp"));
  const RunResult v2 =
      RunCommand(Cmd("bench -m " + TestData("models/v2lite-tiny") + " -p 4 -n 2 -t 1 --json"));
  ASSERT_EQ(v2.status, 0) << v2.output();
  EXPECT_FALSE(Json::parse(v2.out)["runs"][0].contains("mtp"));
  ExpectCleanError(RunCommand(Cmd("bench -m " + dir + " --draft 9")), "--draft");
}

// bench-serve on a checkpoint with an MTP module and a tokenizer: each concurrency without and
// with drafts (the same tokens decoded, the draft counters moving); --no-mtp and a checkpoint
// without MTP run without drafts only; serve and bench-serve refuse drafts out of range.
TEST(Cli, BenchServeReportsTokensPerSecondWithAndWithoutDrafts) {
  const std::string tok = TestData("tokenizer/deepseek_v3");
  DSV3_REQUIRE_DATA(tok + "/tokenizer.json");
  TempDir tmp;
  const std::string m = tmp / "m";
  const RunResult synth = RunCommand(Cmd("synth --no-progress --preset tiny --seed 3 --tokenizer " +
                                         tok + " --set hidden_size=64 -o " + m));
  ASSERT_EQ(synth.status, 0) << synth.output();
  const std::string bench = "bench-serve -m " + m + " --concurrency 1,2 -p 8 -n 12 -t 1";
  const RunResult r = RunCommand(Cmd(bench + " --draft 2 --json"));
  ASSERT_EQ(r.status, 0) << r.output();
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j["draft"], 2);
  ASSERT_EQ(j["runs"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const Json& run = j["runs"][i];
    const int64_t n = i < 2 ? 1 : 2;
    EXPECT_EQ(run["concurrency"], n);
    EXPECT_EQ(run["draft"], i % 2 == 0 ? 0 : 2);
    EXPECT_EQ(run["decode_tokens"], n * 11);  // every token but the first of each request
    EXPECT_GT(run["decode_tokens_per_second"].get<double>(), 0);
    if (i % 2 == 0) {
      EXPECT_EQ(run["drafts_proposed"], 0);
      EXPECT_EQ(run["decode_steps"], 11);
    } else {
      EXPECT_GT(run["drafts_proposed"].get<int64_t>(), 0);
      EXPECT_LE(run["drafts_accepted"].get<int64_t>(), run["drafts_proposed"].get<int64_t>());
      EXPECT_LE(run["decode_steps"].get<int64_t>(), 11);
      EXPECT_GT(run["speedup_vs_no_drafts"].get<double>(), 0);
    }
  }
  const RunResult text = RunCommand(Cmd(bench));  // --draft 1 by default
  ASSERT_EQ(text.status, 0) << text.output();
  EXPECT_THAT(text.out, HasSubstr("concurrency   2:"));
  EXPECT_THAT(text.out, HasSubstr("MTP draft 1:"));
  EXPECT_THAT(text.out, HasSubstr("vs no drafts"));
  const RunResult off = RunCommand(Cmd(bench + " --no-mtp --json"));
  ASSERT_EQ(off.status, 0) << off.output();
  EXPECT_EQ(Json::parse(off.out)["runs"].size(), 2u);
  EXPECT_EQ(Json::parse(off.out)["draft"], 0);
  const RunResult no_mtp =
      RunCommand(Cmd("synth --no-progress --preset tiny --seed 3 --tokenizer " + tok +
                     " --set hidden_size=64 --set "
                     "num_nextn_predict_layers=0 -o " +
                     (tmp / "plain")));
  ASSERT_EQ(no_mtp.status, 0) << no_mtp.output();
  const RunResult plain = RunCommand(
      Cmd("bench-serve -m " + (tmp / "plain") + " --concurrency 1 -p 4 -n 4 -t 1 --json"));
  ASSERT_EQ(plain.status, 0) << plain.output();
  EXPECT_EQ(Json::parse(plain.out)["runs"].size(), 1u);
  ExpectCleanError(RunCommand(Cmd(bench + " --draft 7")), "--draft");
  ExpectCleanError(RunCommand(Cmd("serve -m " + m + " --draft 0")), "--draft");
}

// bench reports the bytes each decode phase read per second: every phase has a figure, and
// figure times the phase's time per step, summed over the phases, gives back the weight bytes
// per token plus the latent cache rows the steps attended to.
TEST(Cli, BenchReportsBytesPerSecondByPhase) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  const RunResult r = RunCommand(Cmd("bench -m " + dir + " -p 16 -n 8 -t 1 --no-mtp --json"));
  ASSERT_EQ(r.status, 0) << r.output();
  const Json j = Json::parse(r.out)["runs"][0];
  const Json& d = j["decode"];
  const double steps = d["tokens"].get<double>(), seconds = d["seconds"].get<double>();
  double bytes = 0;
  for (const char* phase : {"embed", "attn_project", "attn_core", "attn_out", "router", "experts",
                            "dense_mlp", "lm_head"}) {
    ASSERT_TRUE(d["phase_gbs"].contains(phase)) << phase;
    const double gbs = d["phase_gbs"][phase].get<double>();
    const double fraction = d["phase_fractions"][phase].get<double>();
    EXPECT_GT(gbs, 0) << phase;
    bytes += gbs * 1e9 * fraction * seconds / steps;
  }
  const double context = d["context"].get<double>() + (steps + 1) / 2;
  const double want =
      j["weight_bytes_per_token"].get<double>() + j["kv_bytes_per_token"].get<double>() * context;
  EXPECT_NEAR(bytes, want, 1e-6 * want);
  // The text report shows them too.
  const RunResult text = RunCommand(Cmd("bench -m " + dir + " -p 16 -n 8 -t 1 --no-mtp"));
  ASSERT_EQ(text.status, 0) << text.output();
  EXPECT_NE(text.out.find("lm_head"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find(" GB/s)"), std::string::npos) << text.out;
}

// --kv-cache bf16 halves the cache; its generate output names the type; a bad type is a clean
// error on every command that takes it.
TEST(Cli, KvCacheTypeOption) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  const RunResult b = RunCommand(Cmd("bench -m " + dir +
                                     " -p 8 -n 4 -t 1 --no-mtp --context 100 --kv-cache bf16 "
                                     "--json"));
  ASSERT_EQ(b.status, 0) << b.output();
  const Json j = Json::parse(b.out)["runs"][0];
  EXPECT_EQ(j["kv_bytes_per_token"], 480);
  EXPECT_EQ(j["kv_cache"], "bf16");
  EXPECT_GT(j["long_context_decode"]["tokens_per_second"].get<double>(), 0);
  const RunResult g =
      RunCommand(Cmd("generate -m " + dir + " --ids 5,6,7 -n 4 -t 1 --kv-cache bf16 --no-mtp"));
  ASSERT_EQ(g.status, 0) << g.output();
  EXPECT_THAT(g.output(), HasSubstr("KV cache 480 bytes/token (3 layers x 80 BF16 values)"));
  for (const char* cmd : {"bench", "generate --ids 1", "logits --ids 1 -o /dev/null"}) {
    ExpectCleanError(RunCommand(Cmd(std::string(cmd) + " -m " + dir + " --kv-cache f16")),
                     "--kv-cache");
  }
}

TEST(Cli, MatMulPrecisionOption) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  for (const char* precision : {"f32", "bf16"}) {
    const RunResult b = RunCommand(Cmd("bench -m " + dir + " -p 20 -n 2 -t 1 --no-mtp --json" +
                                       (precision == std::string("bf16") ? " --matmul bf16" : "")));
    ASSERT_EQ(b.status, 0) << b.output();
    EXPECT_EQ(Json::parse(b.out)["runs"][0]["matmul"], precision);
  }
  const RunResult g =
      RunCommand(Cmd("generate -m " + dir + " --ids 5,6,7 -n 2 -t 1 --matmul bf16 --no-mtp"));
  ASSERT_EQ(g.status, 0) << g.output();
  EXPECT_THAT(g.output(), HasSubstr("bf16 matmul"));
  for (const char* cmd : {"bench", "generate --ids 1", "logits --ids 1 -o /dev/null", "serve"}) {
    ExpectCleanError(RunCommand(Cmd(std::string(cmd) + " -m " + dir + " --matmul f16")),
                     "--matmul");
  }
}

// --lm-head fp8: the head is quantized at load (bench names it and reads fewer bytes per token);
// a bad value is a clean error on every command that takes the option.
TEST(Cli, LmHeadOption) {
  const std::string dir = TestData(kV3Tiny);
  DSV3_REQUIRE_DATA(dir);
  Json runs[2];
  for (int fp8 = 0; fp8 < 2; ++fp8) {
    const RunResult b = RunCommand(Cmd("bench -m " + dir + " -p 8 -n 2 -t 1 --no-mtp --json" +
                                       (fp8 ? " --lm-head fp8" : " --lm-head stored")));
    ASSERT_EQ(b.status, 0) << b.output();
    runs[fp8] = Json::parse(b.out)["runs"][0];
  }
  EXPECT_NE(runs[0]["lm_head"], "F8_E4M3");
  EXPECT_EQ(runs[1]["lm_head"], "F8_E4M3");
  EXPECT_LT(runs[1]["weight_bytes_per_token"].get<double>(),
            runs[0]["weight_bytes_per_token"].get<double>());
  const RunResult g =
      RunCommand(Cmd("generate -m " + dir + " --ids 5,6,7 -n 2 -t 1 --lm-head fp8 --no-mtp"));
  ASSERT_EQ(g.status, 0) << g.output();
  EXPECT_THAT(g.output(), HasSubstr("lm_head quantized to fp8"));
  for (const char* cmd : {"bench", "generate --ids 1", "logits --ids 1 -o /dev/null", "serve",
                          "bench-serve", "chat", "perplexity -f /dev/null"}) {
    ExpectCleanError(RunCommand(Cmd(std::string(cmd) + " -m " + dir + " --lm-head int8")),
                     "--lm-head");
  }
}

TEST(Cli, SynthWritesLoadableDeterministicCheckpoints) {
  TempDir tmp;
  auto synth = [&](const std::string& args, const std::string& out) {
    const RunResult r = RunCommand(Cmd("synth --no-progress " + args + " -o " + out));
    ASSERT_EQ(r.status, 0) << r.output();
  };
  synth("--preset tiny --dtype bf16 --seed 1", tmp / "a");
  synth("--preset tiny --dtype bf16 --seed 1", tmp / "b");
  synth("--preset tiny --dtype bf16 --seed 2", tmp / "c");
  EXPECT_EQ(ReadFile(tmp / "a/model.safetensors"), ReadFile(tmp / "b/model.safetensors"));
  EXPECT_NE(ReadFile(tmp / "a/model.safetensors"), ReadFile(tmp / "c/model.safetensors"));
  // FP8 in one file, and the same weights in 1 MiB shards with an index: identical logits.
  synth("--preset tiny --dtype fp8 --seed 5", tmp / "f");
  synth("--preset tiny --dtype fp8 --seed 5 --shard-size 1", tmp / "s");
  EXPECT_TRUE(fs::exists(tmp / "f/model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "s/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(tmp / "s/model-00001-of-00009.safetensors"))
      << "expected 9 shards of <= 1 MiB";
  for (const char* m : {"a", "f", "s"}) {
    const RunResult r = RunCommand(
        Cmd(std::string("logits -m ") + (tmp / m) + " --ids 1,2,3,4 -o " + (tmp / m) + "/l.bin"));
    ASSERT_EQ(r.status, 0) << r.output();
    EXPECT_THAT(r.output(), ::testing::Not(HasSubstr("warning")));
  }
  EXPECT_EQ(ReadFile(tmp / "f/l.bin"), ReadFile(tmp / "s/l.bin"));
  // The MTP layer (index 3 = num_hidden_layers) in the Hugging Face layout, MoE like layer 2.
  const Checkpoint tiny(tmp / "f");
  const std::map<std::string, std::vector<int64_t>> mtp = {
      {"model.layers.3.embed_tokens.weight", {1024, 256}},
      {"model.layers.3.enorm.weight", {256}},
      {"model.layers.3.hnorm.weight", {256}},
      {"model.layers.3.eh_proj.weight", {256, 512}},
      {"model.layers.3.mlp.experts.15.up_proj.weight", {128, 256}},
      {"model.layers.3.shared_head.norm.weight", {256}},
      {"model.layers.3.shared_head.head.weight", {1024, 256}}};
  for (const auto& [name, shape] : mtp) {
    ASSERT_NE(tiny.Find(name), nullptr) << name;
    EXPECT_EQ(tiny.Find(name)->shape, shape) << name;
  }
  const Json config = ReadJsonFile(tmp / "f/config.json", 1 << 20);
  EXPECT_EQ(config["quantization_config"]["weight_block_size"], Json({128, 128}));
  // Overrides reach the config, including nested fields; bad overrides are errors.
  synth(
      "--preset tiny --set num_hidden_layers=2 --set rope_scaling.factor=8 --set q_lora_rank=null",
      tmp / "o");
  const Json o = ReadJsonFile(tmp / "o/config.json", 1 << 20);
  EXPECT_EQ(o["num_hidden_layers"], 2);
  EXPECT_EQ(o["rope_scaling"]["factor"], 8);
  EXPECT_TRUE(o["q_lora_rank"].is_null());
  EXPECT_EQ(RunCommand(Cmd("generate -m " + (tmp / "o") + " --ids 1 -n 3")).status, 0);
  ExpectCleanError(RunCommand(Cmd("synth --preset tiny --set topk_method=best -o " + (tmp / "x"))),
                   "topk_method");
}

// The real DeepSeek-V3 shapes per layer, as published (config.json of deepseek-ai/DeepSeek-V3).
TEST(Cli, SynthV3HasTheRealShapes) {
  TempDir tmp;
  const std::string out = tmp / "v3";
  // Without the MTP layer (checked on the tiny preset) to halve the ~3 GB written.
  RunResult r =
      RunCommand(Cmd("synth --no-progress --preset v3 --dtype fp8 --set num_hidden_layers=2 "
                     "--set num_nextn_predict_layers=0 -o " +
                     out));
  ASSERT_EQ(r.status, 0) << r.output();
  const Checkpoint ckpt(out);
  const std::map<std::string, std::vector<int64_t>> want = {
      {"model.embed_tokens.weight", {129280, 7168}},
      {"lm_head.weight", {129280, 7168}},
      {"model.layers.1.self_attn.q_a_proj.weight", {1536, 7168}},
      {"model.layers.1.self_attn.q_a_proj.weight_scale_inv", {12, 56}},
      {"model.layers.1.self_attn.q_b_proj.weight", {24576, 1536}},
      {"model.layers.1.self_attn.kv_a_proj_with_mqa.weight", {576, 7168}},
      {"model.layers.1.self_attn.kv_a_proj_with_mqa.weight_scale_inv", {5, 56}},
      {"model.layers.1.self_attn.kv_a_layernorm.weight", {512}},
      {"model.layers.1.self_attn.kv_b_proj.weight", {32768, 512}},
      {"model.layers.1.self_attn.o_proj.weight", {7168, 16384}},
      {"model.layers.1.mlp.gate_proj.weight", {18432, 7168}},
      {"model.layers.1.mlp.down_proj.weight", {7168, 18432}},
      {"model.layers.1.mlp.down_proj.weight_scale_inv", {56, 144}},
  };
  for (const auto& [name, shape] : want) {
    const TensorInfo* t = ckpt.Find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->shape, shape) << name;
  }
  EXPECT_EQ(ckpt.Find("model.layers.1.self_attn.q_b_proj.weight")->dtype, DType::kF8E4M3);
  EXPECT_EQ(ckpt.Find("model.embed_tokens.weight")->dtype, DType::kBF16);
  EXPECT_EQ(ckpt.Find("model.layers.2.eh_proj.weight"), nullptr);
  // embedding, 2 x (9 attention + 3 MLP tensors + 8 FP8 scale tensors), final norm, lm_head
  EXPECT_EQ(ckpt.tensors().size(), 1 + 2 * (9 + 3 + 8) + 2u);
  r = RunCommand(Cmd("generate -m " + out + " --ids 0,100 -n 2"));
  EXPECT_EQ(r.status, 0) << r.output();
}

// --- bad input ---------------------------------------------------------------------------------

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = TestData(kV3Tiny);
    DSV3_REQUIRE_DATA(src_);
    fs::create_directories(model());
    CopyModel(src_, model());
  }
  std::string model() const { return tmp_ / "m"; }
  std::string shard(int i) const {
    return model() + "/model-0000" + std::to_string(i) + "-of-00002.safetensors";
  }
  RunResult Generate(const std::string& ids = "1,2,3") {
    return RunCommand(Cmd("generate -m " + model() + " --ids " + ids + " -n 2"));
  }
  TempDir tmp_;
  std::string src_;
};

TEST_F(BadInput, MissingConfig) {
  fs::remove(model() + "/config.json");
  ExpectCleanError(Generate(), model() + "/config.json");
}

TEST_F(BadInput, MissingShard) {
  fs::remove(shard(2));
  ExpectCleanError(Generate(), "model-00002-of-00002.safetensors");
}

TEST_F(BadInput, TruncatedShard) {
  fs::resize_file(shard(1), fs::file_size(shard(1)) - 1000);
  const RunResult r = Generate();
  ExpectCleanError(r, "model-00001-of-00002.safetensors");
  EXPECT_THAT(r.output(), HasSubstr("truncated"));
}

TEST_F(BadInput, HeaderOffsetsPastTheEnd) {
  PatchHeader(shard(1), [](Json& h) {
    h["model.norm.weight"] = {
        {"dtype", "BF16"}, {"shape", {256}}, {"data_offsets", {1u << 30, (1u << 30) + 512}}};
  });
  PatchHeader(shard(2), [](Json& h) { h.erase("model.norm.weight"); });
  ExpectCleanError(Generate(), "'model.norm.weight'");
}

TEST_F(BadInput, OverlappingTensors) {
  PatchHeader(shard(1), [](Json& h) {
    Json& a = h["model.layers.0.input_layernorm.weight"];
    const Json& b = h["model.layers.0.post_attention_layernorm.weight"];
    a["data_offsets"] = {b["data_offsets"][0].get<uint64_t>() + 2,
                         b["data_offsets"][1].get<uint64_t>() + 2};
  });
  const RunResult r = Generate();
  ExpectCleanError(r, "overlap");
  EXPECT_THAT(r.output(), HasSubstr("model.layers.0.input_layernorm.weight"));
}

TEST_F(BadInput, AbsurdHeaderLength) {
  std::string bytes = ReadFile(shard(1));
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(i == 7 ? 0x40 : 0);
  WriteFile(shard(1), bytes);
  ExpectCleanError(Generate(), "header length");
}

TEST_F(BadInput, WrongShape) {
  PatchHeader(shard(1), [](Json& h) {
    h["model.layers.0.self_attn.q_a_proj.weight"]["shape"] = {256, 96};
  });
  const RunResult r = Generate();
  ExpectCleanError(
      r, "'model.layers.0.self_attn.q_a_proj.weight' has shape [256, 96], expected [96, 256]");
}

TEST_F(BadInput, WrongDtype) {
  PatchHeader(shard(1),
              [](Json& h) { h["model.layers.0.self_attn.kv_b_proj.weight"]["dtype"] = "U8"; });
  ExpectCleanError(Generate(), "'model.layers.0.self_attn.kv_b_proj.weight' has dtype U8");
}

TEST_F(BadInput, WrongScaleShape) {
  PatchHeader(shard(1), [](Json& h) {
    h["model.layers.0.self_attn.o_proj.weight_scale_inv"]["dtype"] = "I32";
  });
  ExpectCleanError(Generate(), "o_proj.weight_scale_inv");
}

TEST_F(BadInput, MissingTensor) {
  PatchHeader(shard(2), [](Json& h) { h.erase("lm_head.weight"); });
  const std::string index_path = model() + "/model.safetensors.index.json";
  Json index = ReadJsonFile(index_path, 1 << 20);
  index["weight_map"].erase("lm_head.weight");
  WriteFile(index_path, index.dump());
  ExpectCleanError(Generate(), "tensor 'lm_head.weight' is missing");
}

TEST_F(BadInput, UnknownConfigValue) {
  Json config = ReadJsonFile(model() + "/config.json", 1 << 20);
  config["topk_method"] = "random";
  WriteFile(model() + "/config.json", config.dump());
  ExpectCleanError(Generate(), "field 'topk_method' is 'random'");
  // Control characters from the file are shown escaped: still one line, no terminal codes.
  config["topk_method"] = "a\nb\x1b[2J";
  WriteFile(model() + "/config.json", config.dump());
  ExpectCleanError(Generate(), "field 'topk_method' is 'a\\x0ab\\x1b[2J'");
}

TEST_F(BadInput, TokenIdBeyondVocab) {
  ExpectCleanError(Generate("1,1024"),
                   "token id 1024 at position 1 is out of range: vocab_size is 1024");
  ExpectCleanError(RunCommand(Cmd("logits -m " + model() + " --ids 5000 -o " + (tmp_ / "x"))),
                   "token id 5000");
  ExpectCleanError(Generate("1,-2"), "--ids");
  ExpectCleanError(Generate("1,abc"), "--ids");
}

TEST_F(BadInput, MoreTokensThanMaxPositionEmbeddings) {
  Json config = ReadJsonFile(model() + "/config.json", 1 << 20);
  config["max_position_embeddings"] = 8;
  WriteFile(model() + "/config.json", config.dump());
  ExpectCleanError(Generate("1,2,3,4,5,6,7,8,9"), "max_position_embeddings (8)");
  ExpectCleanError(
      RunCommand(Cmd("logits -m " + model() + " --ids 1,2,3,4,5,6,7,8,9 -o " + (tmp_ / "x"))),
      "max_position_embeddings (8)");
  ExpectCleanError(Generate("1,2,3,4,5,6,7,8"), "max_position_embeddings (8)");  // 8 + 1 fed back
  EXPECT_EQ(Generate("1,2,3,4,5,6,7").status, 0);  // 7 + 1 fed back: fits exactly
  ExpectCleanError(RunCommand(Cmd("generate -m " + model() + " --ids 1,2,3 -n 4 -c 4")),
                   "context size of 4");
}

TEST_F(BadInput, NotAModelFolder) {
  ExpectCleanError(RunCommand(Cmd("info -m /nonexistent/dir")), "/nonexistent/dir");
}

}  // namespace
}  // namespace dsv3
