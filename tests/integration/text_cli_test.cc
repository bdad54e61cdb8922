// The text commands end to end: tokenize, detokenize and chat-template over JSON lines against
// the Hugging Face test data, generate -p and a piped chat on a synthetic tiny model carrying
// the DeepSeek-V3 tokenizer, synth --tokenizer, and bad input ending in one clean error line.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
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
using test::TestData;
using test::WriteFile;
using ::testing::HasSubstr;

std::string Cmd(const std::string& args) { return Dsv3Binary() + " " + args; }
std::string TokDir() { return TestData("tokenizer/deepseek_v3"); }

std::vector<OrderedJson> ReadLines(const std::string& path) {
  std::vector<OrderedJson> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(OrderedJson::parse(line));
  return lines;
}

std::vector<OrderedJson> ParseLines(const std::string& text) {
  std::vector<OrderedJson> lines;
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    lines.push_back(OrderedJson::parse(text.substr(start, nl - start)));
  }
  EXPECT_EQ(start, text.size()) << "output does not end with a newline";
  return lines;
}

// Runs `args` with `input` on stdin.
RunResult RunWithInput(const std::string& args, const std::string& input) {
  TempDir tmp;
  WriteFile(tmp / "stdin", input);
  return RunCommand(Cmd(args) + " < " + (tmp / "stdin"));
}

TEST(TextCli, TokenizeJsonlReproducesEveryEncodeCase) {
  DSV3_REQUIRE_DATA(TokDir() + "/encode_cases.jsonl");
  const std::vector<OrderedJson> cases = ReadLines(TokDir() + "/encode_cases.jsonl");
  std::string input;
  for (size_t i = 0; i < cases.size(); ++i) {
    OrderedJson line = {{"text", cases[i]["text"]}};
    if (i % 2 == 1) line["add_special_tokens"] = true;
    input += line.dump() + "\n";
  }
  const RunResult r = RunWithInput("tokenize --tokenizer " + TokDir() + " --jsonl", input);
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<OrderedJson> out = ParseLines(r.out);
  ASSERT_EQ(out.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(out[i]["ids"], cases[i][i % 2 == 1 ? "ids_with_bos" : "ids"]) << cases[i]["text"];
  }
  // The same through a tokenizer.json path, -p and --add-special-tokens.
  const RunResult p =
      RunCommand(Cmd("tokenize --tokenizer " + TokDir() + "/tokenizer.json -p 'Hello world'"));
  EXPECT_EQ(p.out, "19923,2058\n") << p.err;  // encode_cases.jsonl, "classic"
  const RunResult b =
      RunCommand(Cmd("tokenize -m " + TokDir() + " -p 'Hello world' --add-special-tokens"));
  EXPECT_EQ(b.out, "0,19923,2058\n") << b.err;
}

TEST(TextCli, TokenizeFileAndBench) {
  DSV3_REQUIRE_DATA(TokDir() + "/encode_cases.jsonl");
  // The file mode and the JSONL mode give the same ids for the same text (all the encode-case
  // texts in one file); --bench reports its size and token count.
  TempDir tmp;
  std::string text;
  for (const OrderedJson& c : ReadLines(TokDir() + "/encode_cases.jsonl")) {
    text += c["text"].get<std::string>() + "\n";
  }
  WriteFile(tmp / "text.txt", text);
  const RunResult ids =
      RunCommand(Cmd("tokenize --tokenizer " + TokDir() + " --file " + (tmp / "text.txt")));
  ASSERT_EQ(ids.status, 0) << ids.err;
  const RunResult jsonl = RunWithInput("tokenize --tokenizer " + TokDir() + " --jsonl",
                                       OrderedJson{{"text", text}}.dump() + "\n");
  ASSERT_EQ(jsonl.status, 0) << jsonl.err;
  const std::vector<int32_t> want = ParseLines(jsonl.out)[0]["ids"].get<std::vector<int32_t>>();
  std::string joined;
  for (size_t i = 0; i < want.size(); ++i) joined += (i ? "," : "") + std::to_string(want[i]);
  EXPECT_EQ(ids.out, joined + "\n");
  const RunResult bench = RunCommand(
      Cmd("tokenize --tokenizer " + TokDir() + " --file " + (tmp / "text.txt") + " --bench 2"));
  ASSERT_EQ(bench.status, 0) << bench.err;
  const OrderedJson b = ParseLines(bench.out)[0];
  EXPECT_EQ(b["bytes"], text.size());
  EXPECT_EQ(b["tokens"], want.size());
  EXPECT_EQ(b["runs"], 2);
  EXPECT_GT(b["mb_per_s_median"].get<double>(), 0);
}

TEST(TextCli, DetokenizeJsonlReproducesEveryDecodeCase) {
  DSV3_REQUIRE_DATA(TokDir() + "/decode_cases.jsonl");
  const std::vector<OrderedJson> cases = ReadLines(TokDir() + "/decode_cases.jsonl");
  std::string input;
  for (const OrderedJson& c : cases) {
    input +=
        OrderedJson{{"ids", c["ids"]}, {"skip_special_tokens", c["skip_special_tokens"]}}.dump() +
        "\n";
  }
  const RunResult r = RunWithInput("detokenize --tokenizer " + TokDir() + " --jsonl", input);
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<OrderedJson> out = ParseLines(r.out);
  ASSERT_EQ(out.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(out[i]["text"], cases[i]["decoded"]) << cases[i].dump();
  }
  const RunResult ids = RunCommand(
      Cmd("detokenize --tokenizer " + TokDir() + " --ids 0,23166,1031 --skip-special-tokens"));
  EXPECT_EQ(ids.out, "Hi there\n") << ids.err;
}

TEST(TextCli, ChatTemplateJsonlReproducesEveryChatCase) {
  DSV3_REQUIRE_DATA(TokDir() + "/chat_cases.jsonl");
  const std::vector<OrderedJson> cases = ReadLines(TokDir() + "/chat_cases.jsonl");
  std::string input;
  for (const OrderedJson& c : cases) {
    input += OrderedJson{{"messages", c["messages"]},
                         {"add_generation_prompt", c["add_generation_prompt"]}}
                 .dump() +
             "\n";
  }
  const RunResult r = RunWithInput("chat-template -m " + TokDir() + " --jsonl", input);
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<OrderedJson> out = ParseLines(r.out);
  ASSERT_EQ(out.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(out[i]["text"], cases[i]["rendered"]) << cases[i]["name"];
    EXPECT_EQ(out[i]["ids"], cases[i]["ids"]) << cases[i]["name"];
  }
}

TEST(TextCli, BadInputGivesOneCleanError) {
  DSV3_REQUIRE_DATA(TokDir());
  const std::string tok = " --tokenizer " + TokDir() + " --jsonl";
  ExpectCleanError(RunWithInput("tokenize" + tok, "{\"text\": \"a\"}\n{\"text\": \n"),
                   {"stdin line 2", "invalid JSON"});
  ExpectCleanError(RunWithInput("tokenize" + tok, "{\"text\": \"a\"}\n\n"),
                   {"stdin line 2", "empty line"});
  ExpectCleanError(RunWithInput("tokenize" + tok, "{\"txt\": \"a\"}\n"),
                   {"stdin line 1", "'text'"});
  ExpectCleanError(RunWithInput("tokenize" + tok, "[1]\n"), {"stdin line 1", "JSON object"});
  ExpectCleanError(RunWithInput("tokenize" + tok, "{\"text\": \"a\xFF\"}\n"),
                   {"stdin line 1", "invalid JSON"});
  ExpectCleanError(
      RunCommand(Cmd("tokenize --tokenizer " + TokDir() + " -p \"$(printf 'a\\377')\"")),
      {"not valid UTF-8", "offset 1"});
  ExpectCleanError(RunWithInput("detokenize" + tok, "{\"ids\": [1, 2]}\n{\"ids\": [3, 128815]}\n"),
                   {"stdin line 2", "token id 128815 is not in the vocabulary"});
  ExpectCleanError(RunWithInput("detokenize" + tok, "{\"ids\": [1, \"x\"]}\n"),
                   {"stdin line 1", "ids[1]"});
  ExpectCleanError(RunCommand(Cmd("tokenize --tokenizer /nonexistent -p x")),
                   {"/nonexistent: no such file"});
  TempDir tmp;
  WriteFile(tmp / "tokenizer.json", "{\"model\": {\"type\": \"BPE\"");
  ExpectCleanError(RunCommand(Cmd("tokenize --tokenizer " + tmp.path() + " -p x")),
                   {tmp / "tokenizer.json", "invalid JSON"});
  // A chat template that needs more than the interpreter has.
  fs::copy_file(TokDir() + "/tokenizer.json", tmp / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  WriteFile(
      tmp / "tokenizer_config.json",
      R"({"chat_template": "{% for m in messages %}{{ m.content | wordwrap(5) }}{% endfor %}"})");
  ExpectCleanError(
      RunWithInput("chat-template -m " + tmp.path() + " --jsonl",
                   R"({"messages": [{"role": "user", "content": "hi"}]})"
                   "\n"),
      {"stdin line 1", "chat_template", "line 1, column 39", "unknown filter 'wordwrap'"});
  WriteFile(tmp / "tokenizer_config.json", R"({"chat_template": "{% call x() %}{% endcall %}"})");
  ExpectCleanError(RunWithInput("chat-template -m " + tmp.path() + " --jsonl", "{}\n"),
                   {"chat_template", "tag 'call' is not supported"});
}

// A tiny random model with the DeepSeek-V3 tokenizer, written once for these tests.
class TextModelCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(TokDir())) return;
    dir_ = new TempDir();
    const RunResult r = test::SynthTextModel(model());
    ASSERT_EQ(r.status, 0) << r.output();
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override { DSV3_REQUIRE_DATA(TokDir()); }
  static std::string model() { return *dir_ / "m"; }
  static TempDir* dir_;
};
TempDir* TextModelCli::dir_ = nullptr;

TEST_F(TextModelCli, SynthCopiesTheTokenizerAndSizesTheVocabulary) {
  EXPECT_EQ(ReadFile(model() + "/tokenizer.json"), ReadFile(TokDir() + "/tokenizer.json"));
  EXPECT_EQ(ReadFile(model() + "/tokenizer_config.json"),
            ReadFile(TokDir() + "/tokenizer_config.json"));
  const Json config = ReadJsonFile(model() + "/config.json", 1 << 20);
  EXPECT_EQ(config["vocab_size"], 128815);  // highest id 128814, per the test data README
  EXPECT_EQ(config["bos_token_id"], 0);
  EXPECT_EQ(config["eos_token_id"], 1);
  TempDir tmp;
  ExpectCleanError(RunCommand(Cmd("synth --no-progress --tokenizer " + TokDir() +
                                  " --set vocab_size=1000 -o " + (tmp / "x"))),
                   {"vocab_size 1000 is smaller than the 128815 ids"});
}

TEST_F(TextModelCli, GenerateFromTextPrompts) {
  const RunResult r = RunCommand(Cmd("generate -m " + model() + " -p 'Hello!' -n 12 -t 1"));
  ASSERT_EQ(r.status, 0) << r.output();
  ASSERT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_THAT(r.err, HasSubstr("tokens/s"));
  // The chat-templated prompt is 5 tokens: BOS <｜User｜> Hello ! <｜Assistant｜>.
  EXPECT_THAT(r.err, HasSubstr("prefill 5 tokens"));
  const RunResult raw = RunCommand(Cmd("generate -m " + model() + " -p 'Hello!' --raw -n 4"));
  ASSERT_EQ(raw.status, 0) << raw.output();
  EXPECT_THAT(raw.err, HasSubstr("prefill 3 tokens"));  // BOS Hello !
  // Generated text equals the decoded ids of the same run with --ids.
  const RunResult ids = RunCommand(
      Cmd("generate -m " + model() + " --ids 0,128803,19923,3,128804 -n 12 --ignore-eos -t 1"));
  ASSERT_EQ(ids.status, 0) << ids.output();
  std::string id_list = ids.out.substr(0, ids.out.size() - 1);
  const RunResult text =
      RunCommand(Cmd("generate -m " + model() + " -p 'Hello!' -n 12 " + "--ignore-eos -t 1"));
  const RunResult decoded =
      RunCommand(Cmd("detokenize -m " + model() + " --skip-special-tokens --ids " + id_list));
  EXPECT_EQ(text.out, decoded.out);
  // --json carries the same text and ids.
  const RunResult json = RunCommand(
      Cmd("generate -m " + model() + " -p 'Hello!' -n 12 " + "--ignore-eos -t 1 --json"));
  ASSERT_EQ(json.status, 0) << json.output();
  const Json j = Json::parse(json.out);
  EXPECT_EQ(j["text"].get<std::string>() + "\n", text.out);
  std::string json_ids;
  for (const Json& id : j["ids"]) json_ids += (json_ids.empty() ? "" : ",") + id.dump();
  EXPECT_EQ(json_ids, id_list);
  // A stop string from inside that text cuts it there.
  const std::string full = text.out.substr(0, text.out.size() - 1);
  if (full.size() >= 8 && full.find('\'') == std::string::npos) {
    size_t at = full.size() / 2;
    while (at > 0 && (static_cast<uint8_t>(full[at]) & 0xC0) == 0x80) --at;
    const std::string stop = full.substr(at, 2);
    const RunResult s = RunCommand(Cmd("generate -m " + model() + " -p 'Hello!' -n 12 " +
                                       "--ignore-eos -t 1 --stop '" + stop + "'"));
    EXPECT_EQ(s.out, full.substr(0, full.find(stop)) + "\n");
  }
  ExpectCleanError(RunCommand(Cmd("generate -m " + model() + " -n 2")), {"give a prompt"});
  ExpectCleanError(RunCommand(Cmd("generate -m " + model() + " --ids 1 --stop x")), {"--stop"});
}

TEST_F(TextModelCli, ChatThroughAPipe) {
  const RunResult r = RunWithInput("chat -m " + model() + " -n 8 -t 1 --system 'Be brief.'",
                                   "Hello!\n\nWhat is 2+2?\n/exit\nnever read\n");
  ASSERT_EQ(r.status, 0) << r.output();
  size_t replies = 0;
  for (size_t at = r.err.find("dsv3: reply"); at != std::string::npos;
       at = r.err.find("dsv3: reply", at + 1)) {
    ++replies;
  }
  EXPECT_EQ(replies, 2u) << r.err;
  EXPECT_THAT(r.err, HasSubstr("tokens/s"));
  // The second turn reused the first from the cache.
  const size_t second = r.err.rfind("dsv3: reply");
  EXPECT_THAT(r.err.substr(second), ::testing::Not(HasSubstr("(0 reused")));
  // End of input (Ctrl-D) ends the chat too.
  const RunResult eof = RunWithInput("chat -m " + model() + " -n 4", "Hi\n");
  EXPECT_EQ(eof.status, 0) << eof.output();
  EXPECT_THAT(eof.err, HasSubstr("dsv3: reply"));
}

}  // namespace
}  // namespace dsv3
