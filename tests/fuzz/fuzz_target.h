// Fuzz targets: each runs one input through an entry point that reads untrusted data. A target
// returns normally when the input is accepted or rejected with dsv3::Error; anything else (a
// sanitizer report, an escaped exception of another type, an abort from a violated invariant)
// is a bug. The same target bodies are built twice: into a libFuzzer binary per target
// (fuzz_main.cc, clang, DSV3_FUZZ=ON) and into the replay test of the normal build
// (fuzz_replay_test.cc), which runs every committed corpus and regression input.
//
// A target is defined once in tests/fuzz/<name>.cc:
//   DSV3_FUZZ_TARGET(name) { ... uses `data` and `size` ... }
// and listed in tests/fuzz/targets.cmake.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {
class Tokenizer;
}

namespace dsv3::fuzz {

using TargetFn = void (*)(const uint8_t* data, size_t size);

struct Target {
  const char* name;
  TargetFn run;
};

// Every target linked into this binary.
std::vector<Target>& Targets();

struct Registrar {
  Registrar(const char* name, TargetFn run) { Targets().push_back({name, run}); }
};

// Runs `fn`, swallowing dsv3::Error (a clean rejection); any other exception aborts with its
// message, so the fuzzer reports it as a crash.
void ExpectCleanResult(const char* target, void (*fn)(const uint8_t*, size_t), const uint8_t* data,
                       size_t size);

// Aborts with `message` when `ok` is false: an invariant of the entry point does not hold.
void Check(bool ok, std::string_view message);

// The tokenizer the tokenizer targets use: DSV3_FUZZ_TOKENIZER (a tokenizer.json or a folder), else
// $DSV3_SHARED/testdata/tokenizer/deepseek_v3, else ../shared/testdata/tokenizer/deepseek_v3 next
// to the source tree.
std::string TokenizerPath();
// The tokenizer at TokenizerPath(), loaded on first use.
const Tokenizer& LoadedTokenizer();

}  // namespace dsv3::fuzz

#define DSV3_FUZZ_TARGET(name)                                                                \
  static void DSV3FuzzBody_##name(const uint8_t* data, size_t size);                          \
  static void DSV3FuzzRun_##name(const uint8_t* data, size_t size) {                          \
    ::dsv3::fuzz::ExpectCleanResult(#name, DSV3FuzzBody_##name, data, size);                  \
  }                                                                                           \
  static const ::dsv3::fuzz::Registrar dsv3_fuzz_registrar_##name(#name, DSV3FuzzRun_##name); \
  static void DSV3FuzzBody_##name(const uint8_t* data, size_t size)
