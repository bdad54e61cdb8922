#include "tests/fuzz/fuzz_target.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::fuzz {

std::vector<Target>& Targets() {
  static std::vector<Target> targets;
  return targets;
}

void ExpectCleanResult(const char* target, void (*fn)(const uint8_t*, size_t), const uint8_t* data,
                       size_t size) {
  try {
    fn(data, size);
  } catch (const Error&) {
    // A clean rejection with a message: what untrusted input should get.
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz target %s: unexpected exception: %s\n", target, e.what());
    std::abort();
  }
}

void Check(bool ok, std::string_view message) {
  if (ok) return;
  std::fprintf(stderr, "fuzz invariant violated: %.*s\n", static_cast<int>(message.size()),
               message.data());
  std::abort();
}

std::string TokenizerPath() {
  if (const char* env = std::getenv("DSV3_FUZZ_TOKENIZER"); env && *env) return env;
  const std::string shared = [] {
    if (const char* env = std::getenv("DSV3_SHARED"); env && *env) return std::string(env);
    return std::string(DSV3_SOURCE_DIR) + "/../shared";
  }();
  return shared + "/testdata/tokenizer/deepseek_v3";
}

const Tokenizer& LoadedTokenizer() {
  static const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::Load(TokenizerPath());
  return *tokenizer;
}

}  // namespace dsv3::fuzz
