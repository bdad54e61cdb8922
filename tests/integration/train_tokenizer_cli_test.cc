// `dsv3 train-tokenizer` end to end: the files it writes load in `dsv3 tokenize`, bad input ends
// in one clean error line, and a tokenizer trained on TinyStories (vocab 4096, with
// <|endoftext|> and with DeepSeek-V3's BOS/EOS) encodes every line of the validation text, and
// the whole text, exactly as Hugging Face's `tokenizers` does (npm package, installed into the
// build folder on first use; skipped without node, a failure when CI is set).
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

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
using ::testing::HasSubstr;

constexpr const char* kTokenizersPackage = "tokenizers@0.23.2";

std::string Cmd(const std::string& args) { return Dsv3Binary() + " " + args; }
std::string TinyStories(const std::string& file) {
  return test::SharedDir() + "/corpus/tinystories/" + file;
}

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (true) {
    const size_t nl = text.find('\n', start);
    lines.push_back(text.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return lines;
}

std::string SmallText() {
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += fmt::format("Story {}: the cat sat on the mat, and the dog ran {} times.\n", i, i * 7);
    text += "<|endoftext|>\n";
  }
  return text;
}

// The folder holding node_modules/tokenizers (installed on first use), or "" with the reason.
std::string TokenizersPackageDir(std::string* why) {
  return test::NpmPackageDir("npm-tokenizers", kTokenizersPackage, why);
}

TEST(TrainTokenizerCli, WritesFilesThatTokenizeLoads) {
  TempDir tmp;
  WriteFile(tmp / "data.txt", SmallText());
  const RunResult r = RunCommand(Cmd("train-tokenizer --data " + tmp / "data.txt" +
                                     " --vocab-size 320 --special '<|endoftext|>' --special "
                                     "'<|pad|>' -o " +
                                     tmp / "out/tok --no-progress -t 2"));
  ASSERT_EQ(r.status, 0) << r.output();
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("trained 320 tokens (2 special, 256 bytes"));
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(tmp / "out/tok")) {
    files.push_back(e.path().filename().string());
  }
  EXPECT_THAT(files, ::testing::UnorderedElementsAre("tokenizer.json", "tokenizer_config.json"));
  const Json config = ParseJson(ReadFile(tmp / "out/tok/tokenizer_config.json"), "config");
  EXPECT_EQ(config["bos_token"], "<|endoftext|>");
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");
  const Json tok = ParseJson(ReadFile(tmp / "out/tok/tokenizer.json"), "tokenizer.json");
  EXPECT_EQ(tok["model"]["vocab"].size(), 320u);
  EXPECT_EQ(tok["model"]["vocab"]["<|pad|>"], 1);

  const RunResult enc = RunCommand(
      Cmd("tokenize -m " + tmp / "out/tok" + " -p '<|endoftext|>Story 5: the cat<|pad|>'"));
  ASSERT_EQ(enc.status, 0) << enc.output();
  EXPECT_THAT(enc.out, ::testing::StartsWith("0,"));
  EXPECT_THAT(enc.out, ::testing::EndsWith(",1\n"));

  // Defaults: DeepSeek-V3's BOS and EOS as ids 0 and 1, BOS added by encode.
  const RunResult d = RunCommand(Cmd("train-tokenizer --data " + tmp / "data.txt" +
                                     " --vocab-size 300 -o " + tmp / "ds --no-progress"));
  ASSERT_EQ(d.status, 0) << d.output();
  const RunResult bos =
      RunCommand(Cmd("tokenize -m " + tmp / "ds" + " -p 'the cat' --add-special-tokens"));
  ASSERT_EQ(bos.status, 0) << bos.output();
  EXPECT_THAT(bos.out, ::testing::StartsWith("0,"));
  const RunResult chat = RunCommand(
      "echo '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
      "\"add_generation_prompt\": true}' | " +
      Cmd("chat-template -m " + tmp / "ds" + " --jsonl"));
  ASSERT_EQ(chat.status, 0) << chat.output();
  EXPECT_THAT(chat.out, HasSubstr("User: Hi\\n\\nAssistant:"));
}

TEST(TrainTokenizerCli, CleanErrors) {
  TempDir tmp;
  WriteFile(tmp / "data.txt", SmallText());
  WriteFile(tmp / "empty.txt", "");
  WriteFile(tmp / "bad.txt", "fine\nstill fine\n\xc3\x28 broken\n");
  const std::string out = " -o " + tmp / "out";
  auto train = [&](const std::string& args) {
    return RunCommand(Cmd("train-tokenizer --no-progress " + args));
  };
  ExpectCleanError(train("--data " + tmp / "missing.txt --vocab-size 300" + out),
                   {tmp / "missing.txt", "no such file"});
  ExpectCleanError(train("--data " + tmp / "empty.txt --vocab-size 300" + out),
                   {tmp / "empty.txt", "empty"});
  ExpectCleanError(train("--data " + tmp / "bad.txt --vocab-size 300" + out),
                   {tmp / "bad.txt", "not valid UTF-8", "byte 0xC3 at offset 16", "line 3"});
  ExpectCleanError(train("--data " + tmp / "data.txt --vocab-size 257 --special '<a>'" + out),
                   {"vocab size 257", "256 byte tokens plus 3 special tokens (259)"});
  ExpectCleanError(train("--data " + tmp / "data.txt --vocab-size 300 -o " + tmp / "data.txt"),
                   {tmp / "data.txt", "not a folder"});
  ExpectCleanError(train("--data " +
                         tmp / "data.txt --vocab-size 300 --special '<a>' "
                               "--special '<a>'" +
                         out),
                   "'<a>': given twice");
  ExpectCleanError(train("--data " + tmp / "data.txt --vocab-size 300 --special a" + out),
                   "spells the byte token");
  // The failed runs wrote nothing, not even the output folder.
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

class TinyStoriesVsHuggingFace : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyStoriesVsHuggingFace, EncodesTheValidationTextIdentically) {
  DSV3_REQUIRE_DATA(TinyStories("train.txt"));
  DSV3_REQUIRE_DATA(TinyStories("valid.txt"));
  TempDir tmp;
  const auto t0 = std::chrono::steady_clock::now();
  const RunResult r = RunCommand(Cmd("train-tokenizer --data " + TinyStories("train.txt") +
                                     " --vocab-size 4096 " + GetParam() + " -o " + tmp / "tok"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.status, 0) << r.output();
  EXPECT_THAT(r.err, HasSubstr("trained 4096 tokens"));
  std::printf("train-tokenizer on TinyStories train.txt (4.2 MB), vocab 4096: %.2f s\n%s", seconds,
              r.err.c_str());

  // The validation text, one JSON line per line.
  const std::string valid = ReadFile(TinyStories("valid.txt"));
  const std::vector<std::string> lines = SplitLines(valid);
  std::string jsonl;
  for (const std::string& l : lines) jsonl += OrderedJson{{"text", l}}.dump() + "\n";
  WriteFile(tmp / "lines.jsonl", jsonl);

  std::string why;
  const std::string npm = TokenizersPackageDir(&why);
  if (npm.empty()) {
    if (std::getenv("CI") != nullptr) FAIL() << why;
    GTEST_SKIP() << "no Hugging Face tokenizers to compare with: " << why
                 << " (needs node and npm, and the npm registry once)";
  }
  const RunResult hf =
      RunCommand("NODE_PATH=" + npm + "/node_modules timeout 300 node " +
                 std::string(DSV3_SOURCE_DIR) + "/tests/integration/hf_tokenizers.cjs " +
                 tmp / "tok" + " " + tmp / "lines.jsonl " + TinyStories("valid.txt"));
  ASSERT_EQ(hf.status, 0) << hf.output();
  const std::vector<std::string> hf_lines = SplitLines(hf.out);
  ASSERT_EQ(hf_lines.size(), lines.size() + 2);  // + the whole text + the final newline

  const RunResult ours =
      RunCommand(Cmd("tokenize -m " + tmp / "tok" + " --jsonl < " + tmp / "lines.jsonl"));
  ASSERT_EQ(ours.status, 0) << ours.output();
  const RunResult ours_special = RunCommand(
      Cmd("tokenize -m " + tmp / "tok" + " --jsonl --add-special-tokens < " + tmp / "lines.jsonl"));
  ASSERT_EQ(ours_special.status, 0) << ours_special.output();
  const std::vector<std::string> a = SplitLines(ours.out), b = SplitLines(ours_special.out);
  ASSERT_EQ(a.size(), lines.size() + 1);
  ASSERT_EQ(b.size(), lines.size() + 1);

  size_t mismatches = 0, special_mismatches = 0, decode_mismatches = 0, tokens = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const Json h = Json::parse(hf_lines[i]);
    const Json ids = Json::parse(a[i])["ids"], ids_special = Json::parse(b[i])["ids"];
    tokens += ids.size();
    if (ids != h["ids"] && mismatches++ < 3) {
      ADD_FAILURE() << "line " << i + 1 << " '" << lines[i] << "': dsv3 " << ids.dump()
                    << ", Hugging Face " << h["ids"].dump();
    }
    if (ids_special != h["ids_special"] && special_mismatches++ < 3) {
      ADD_FAILURE() << "line " << i + 1 << " with special tokens: dsv3 " << ids_special.dump()
                    << ", Hugging Face " << h["ids_special"].dump();
    }
    if (h["decoded"] != lines[i] && decode_mismatches++ < 3) {
      ADD_FAILURE() << "line " << i + 1 << ": Hugging Face decodes to " << h["decoded"].dump();
    }
  }
  const Json whole = Json::parse(hf_lines[lines.size()]);
  const RunResult ours_whole =
      RunCommand(Cmd("tokenize -m " + tmp / "tok" + " --file " + TinyStories("valid.txt")));
  ASSERT_EQ(ours_whole.status, 0) << ours_whole.output();
  std::string hf_whole;
  for (const Json& id : whole["whole"]) hf_whole += (hf_whole.empty() ? "" : ",") + id.dump();
  EXPECT_EQ(ours_whole.out, hf_whole + "\n") << "the whole validation text encodes differently";
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(special_mismatches, 0u);
  EXPECT_EQ(decode_mismatches, 0u);
  EXPECT_GT(lines.size(), 7000u);
  std::printf(
      "compared %zu lines (%zu tokens) and the whole text (%zu tokens) with tokenizers %s: %zu "
      "mismatches, %zu with special tokens, %zu decodings\n",
      lines.size(), tokens, whole["whole"].size(), whole["version"].get<std::string>().c_str(),
      mismatches, special_mismatches, decode_mismatches);
}

INSTANTIATE_TEST_SUITE_P(Specials, TinyStoriesVsHuggingFace,
                         ::testing::Values("--special '<|endoftext|>'", ""),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           return p.param.empty() ? std::string("DeepSeekBosEos")
                                                  : std::string("EndOfText");
                         });

}  // namespace
}  // namespace dsv3
