// The model that ships in models/dsv3-tinystories-10m (trained by dsv3 with the FP8 recipe, see
// its README.md): it loads as an FP8 Hugging Face checkpoint with MTP, its validation loss on the
// first validation stories is the figure on its model card, greedy generation is the same on
// every SIMD target and thread count, and chat and serve work on it as it is.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <cctype>
#include <fstream>
#include <regex>

#include "core/json.h"
#include "io/safetensors.h"
#include "kernels/targets.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

using test::Dsv3Binary;
using test::ReadFile;
using test::RunCommand;
using test::RunResult;
using test::SharedDir;
using test::TempDir;
using test::WriteFile;
using ::testing::HasSubstr;

std::string ModelDir() { return std::string(DSV3_SOURCE_DIR) + "/models/dsv3-tinystories-10m"; }
std::string Cmd(const std::string& args) { return Dsv3Binary() + " " + args; }
const char kPrompt[] = "<|endoftext|>\nOnce upon a time";

// `generate --json` of the fixed prompt, greedy.
Json Greedy(const std::string& extra) {
  TempDir tmp;
  WriteFile(tmp / "prompt", kPrompt);
  const RunResult r = RunCommand(Cmd("generate -m " + ModelDir() + " --raw -n 64 --json " + extra +
                                     " -p \"$(cat " + (tmp / "prompt") + ")\""));
  EXPECT_EQ(r.status, 0) << extra << "\n" << r.output();
  return r.status == 0 ? Json::parse(r.out) : Json::object();
}

TEST(ShippedModel, LoadsAsAnFp8CheckpointWithMtpAndItsTokenizer) {
  const Json config = Json::parse(ReadFile(ModelDir() + "/config.json"));
  EXPECT_EQ(config["model_type"], "deepseek_v3");
  EXPECT_EQ(config["num_nextn_predict_layers"], 1);
  EXPECT_EQ(config["quantization_config"]["quant_method"], "fp8");
  EXPECT_EQ(config["quantization_config"]["weight_block_size"], Json::parse("[128, 128]"));
  const Checkpoint checkpoint(ModelDir());
  const std::string mtp = "model.layers." + config["num_hidden_layers"].dump() + ".";
  int fp8 = 0, mtp_tensors = 0;
  for (const TensorInfo* t : checkpoint.tensors()) {
    if (t->dtype == DType::kF8E4M3) {
      ++fp8;
      // Each FP8 matrix has its 128x128 block scales.
      const std::string scale = t->name.substr(0, t->name.size() - 6) + "weight_scale_inv";
      EXPECT_NE(checkpoint.Find(scale), nullptr) << t->name;
    }
    if (t->name.rfind(mtp, 0) == 0) ++mtp_tensors;  // the MTP layer's index is num_hidden_layers
  }
  EXPECT_GT(fp8, 20);
  EXPECT_NE(checkpoint.Find(mtp + "eh_proj.weight"), nullptr);
  EXPECT_GT(mtp_tensors, 10);

  const RunResult info = RunCommand(Cmd("info -m " + ModelDir()));
  ASSERT_EQ(info.status, 0) << info.output();
  EXPECT_THAT(info.out, HasSubstr("1 dense + 3 MoE, 1 MTP"));
  EXPECT_THAT(info.out, HasSubstr("F8_E4M3"));
  // The tokenizer round-trips a story and knows the story separator as one id.
  const std::string text = "Once upon a time, there was a little cat named Tom.";
  const RunResult ids = RunCommand(Cmd("tokenize -m " + ModelDir() + " -p '" + text + "'"));
  ASSERT_EQ(ids.status, 0) << ids.output();
  const RunResult back = RunCommand(Cmd("detokenize -m " + ModelDir() + " --ids " + ids.out));
  ASSERT_EQ(back.status, 0) << back.output();
  EXPECT_EQ(back.out, text + "\n");
  const RunResult eot = RunCommand(Cmd("tokenize -m " + ModelDir() + " -p '<|endoftext|>'"));
  ASSERT_EQ(eot.status, 0) << eot.output();
  EXPECT_EQ(eot.out, std::to_string(config["eos_token_id"].get<int>()) + "\n");
}

// The card's line "| `dsv3 perplexity -c 256` on the first N stories of valid.txt | CE | PPL |".
TEST(ShippedModel, ValidationLossIsTheFigureOnTheModelCard) {
  const std::string valid = SharedDir() + "/corpus/tinystories/valid.txt";
  DSV3_REQUIRE_DATA(valid);
  const std::string card = ReadFile(ModelDir() + "/README.md");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      card, m,
      std::regex("`dsv3 perplexity -c 256` on the first ([0-9]+) stories of `valid.txt` \\| "
                 "([0-9.]+) \\|")))
      << "no perplexity line in the model card";
  const int stories = std::stoi(m[1]);
  const double want = std::stod(m[2]);
  // The first `stories` stories: everything before the stories-th separator line.
  std::ifstream in(valid);
  std::string prefix;
  int seen = 0;
  for (std::string line; std::getline(in, line);) {
    if (line == "<|endoftext|>" && ++seen == stories) break;
    prefix += line + "\n";
  }
  ASSERT_EQ(seen, stories) << valid << " has fewer stories than the card's " << stories;
  TempDir tmp;
  WriteFile(tmp / "first.txt", prefix);
  const RunResult r = RunCommand(Cmd("perplexity -m " + ModelDir() + " -f " + (tmp / "first.txt") +
                                     " -c 256 --json --no-progress"));
  ASSERT_EQ(r.status, 0) << r.output();
  const Json p = Json::parse(r.out);
  EXPECT_NEAR(p["mean_ce"].get<double>(), want, 0.01 * want) << r.out;
  // A trained model: far below the uniform guess over the vocabulary (ln 4096 = 8.3).
  EXPECT_LT(p["mean_ce"].get<double>(), 4.0);
}

TEST(ShippedModel, GreedyStoryIsTheSameOnEveryTargetAndThreadCount) {
  const Json first = Greedy("-t 1");
  ASSERT_TRUE(first.contains("ids"));
  ASSERT_EQ(first["ids"].size(), 64u);
  // English words, not noise: most of the story is letters and spaces.
  const std::string text = first["text"].get<std::string>();
  int letters = 0;
  for (char c : text) letters += std::isalpha(static_cast<unsigned char>(c)) || c == ' ';
  EXPECT_GT(letters, 0.85 * text.size()) << text;
  // Speculative decoding checked the MTP drafts and kept the greedy sequence.
  ASSERT_TRUE(first.contains("mtp")) << first.dump();
  EXPECT_GT(first["mtp"]["drafts_checked"][0].get<int>(), 0);
  for (const std::string& target : kernels::AvailableTargets()) {
    for (const char* threads : {"1", "2"}) {
      const Json j = Greedy(std::string("-t ") + threads + " --simd " + target);
      EXPECT_EQ(j["ids"], first["ids"]) << target << ", " << threads << " threads";
    }
  }
  EXPECT_EQ(Greedy("-t 2 --no-mtp")["ids"], first["ids"]) << "plain decoding differs";
  EXPECT_EQ(Greedy("-t 1 --draft 3")["ids"], first["ids"]) << "three drafts per step differ";
}

TEST(ShippedModel, ChatAndServeWorkOutOfTheBox) {
  TempDir tmp;
  WriteFile(tmp / "chat", "Tell me a story about a cat.\n/exit\n");
  const RunResult chat =
      RunCommand(Cmd("chat -m " + ModelDir() + " -n 48 -t 2 < " + (tmp / "chat")));
  ASSERT_EQ(chat.status, 0) << chat.output();
  EXPECT_GT(chat.out.size(), 40u) << chat.output();

  test::ServerProcess server(Cmd("serve -m " + ModelDir() + " --port 0 -t 2"), tmp / "serve.log");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client http("127.0.0.1", server.port());
  http.set_read_timeout(120);
  const Json models = Json::parse(http.Get("/v1/models")->body);
  EXPECT_EQ(models["data"][0]["id"], "dsv3-tinystories-10m");
  const Json body = {
      {"model", "dsv3-tinystories-10m"},
      {"messages", {{{"role", "user"}, {"content", "Tell me a story about a dog."}}}},
      {"max_tokens", 48},
      {"temperature", 0}};
  const httplib::Result res = http.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res) << server.log();
  ASSERT_EQ(res->status, 200) << res->body;
  const Json answer = Json::parse(res->body);
  EXPECT_GT(answer["choices"][0]["message"]["content"].get<std::string>().size(), 20u) << res->body;
  EXPECT_GT(answer["usage"]["completion_tokens"].get<int>(), 0);
  // The raw completion of the fixed prompt is generate's greedy story.
  const Json completion = {{"prompt", kPrompt}, {"max_tokens", 64}, {"temperature", 0}};
  const httplib::Result c = http.Post("/v1/completions", completion.dump(), "application/json");
  ASSERT_TRUE(c) << server.log();
  ASSERT_EQ(c->status, 200) << c->body;
  EXPECT_EQ(Json::parse(c->body)["choices"][0]["text"], Greedy("-t 1")["text"]);
  EXPECT_EQ(server.Stop(), 0) << server.log();
}

}  // namespace
}  // namespace dsv3
