// Replays every committed input of every fuzz target (tests/fuzz/corpus/<target>/ and
// tests/fuzz/regressions/<target>/) through the target in the normal build, so a fixed crash
// stays fixed without clang or libFuzzer. A crash here is a crash of the target.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_target.h"
#include "tests/test_util.h"

namespace dsv3::fuzz {

// Test names and failure messages show the target's name.
void PrintTo(const Target& target, std::ostream* os) { *os << target.name; }

namespace {
namespace fs = std::filesystem;

std::vector<std::string> Inputs(const std::string& target, const char* kind) {
  std::vector<std::string> files;
  const fs::path dir = fs::path(DSV3_SOURCE_DIR) / "tests/fuzz" / kind / target;
  if (!fs::is_directory(dir)) return files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The targets that read the test tokenizer from ../shared/testdata.
bool UsesTokenizer(const Target& target) {
  const std::string name = target.name;
  return name.rfind("tokenizer", 0) == 0 || name == "chat_template";
}

class FuzzReplay : public ::testing::TestWithParam<Target> {};

void Replay(const Target& target, const char* kind) {
  for (const std::string& file : Inputs(target.name, kind)) {
    SCOPED_TRACE(file);
    const std::string bytes = ReadAll(file);
    target.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
}

TEST_P(FuzzReplay, Corpus) {
  if (UsesTokenizer(GetParam())) DSV3_REQUIRE_DATA(TokenizerPath());
  EXPECT_FALSE(Inputs(GetParam().name, "corpus").empty())
      << "no seed corpus in tests/fuzz/corpus/" << GetParam().name;
  Replay(GetParam(), "corpus");
}

TEST_P(FuzzReplay, Regressions) {
  if (UsesTokenizer(GetParam())) DSV3_REQUIRE_DATA(TokenizerPath());
  Replay(GetParam(), "regressions");
}

INSTANTIATE_TEST_SUITE_P(AllTargets, FuzzReplay, ::testing::ValuesIn(Targets()),
                         [](const ::testing::TestParamInfo<Target>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace dsv3::fuzz
