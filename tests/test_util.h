// Shared helpers for tests: locating ../shared/testdata, reading reference blobs, temp folders.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/json.h"
#include "runtime/scheduler.h"

namespace dsv3::test {

// DSV3_SHARED, else ../shared next to the repository.
inline std::string SharedDir() {
  if (const char* env = std::getenv("DSV3_SHARED"); env && *env) return env;
  return std::string(DSV3_SOURCE_DIR) + "/../shared";
}

inline std::string TestData(const std::string& rel) { return SharedDir() + "/testdata/" + rel; }

// Returns from the calling test unless `path` exists: the test is skipped, or fails when CI is set
// (on CI, missing reference data must never pass silently).
#define DSV3_REQUIRE_DATA(path)                                                  \
  do {                                                                           \
    if (!std::filesystem::exists(path)) {                                        \
      if (std::getenv("CI") != nullptr) {                                        \
        FAIL() << "test data missing on CI: " << (path) << " (set DSV3_SHARED)"; \
      }                                                                          \
      GTEST_SKIP() << "test data missing: " << (path) << " (set DSV3_SHARED)";   \
    }                                                                            \
  } while (0)

// reference.json + reference.bin of a tiny model.
class Reference {
 public:
  explicit Reference(const std::string& model_dir);
  const Json& json() const { return json_; }
  std::vector<float> F32(const Json& entry) const;
  std::vector<int32_t> I32(const Json& entry) const;
  static int64_t Rows(const Json& entry) { return entry["shape"][0].get<int64_t>(); }
  static int64_t Cols(const Json& entry) { return entry["shape"][1].get<int64_t>(); }

 private:
  Json json_;
  std::vector<uint8_t> blob_;
};

// A fresh, empty folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes bytes to a file.
void WriteFile(const std::string& path, const std::string& bytes);
std::string ReadFile(const std::string& path);

struct RunResult {
  int status = -1;
  std::string out, err;  // stdout, stderr
  std::string output() const { return err + out; }
};
// Runs a shell command, capturing stdout and stderr.
RunResult RunCommand(const std::string& command);
// The dsv3 binary built next to the tests.
inline std::string Dsv3Binary() { return DSV3_BINARY; }

// The folder (`folder` next to the dsv3 binary) whose node_modules holds the npm `package`
// ("name@version"), installed there on first use, or "" with the reason in `why` when node or the
// package cannot be had. ctest runs tests in parallel: the install runs once, under a lock, and a
// marker written after it succeeds is what later callers check, so none sees a half-written
// package or reinstalls it under a running one.
std::string NpmPackageDir(const std::string& folder, const std::string& package, std::string* why);

// Writes a tiny random model (hidden_size 64, no MTP layer) carrying the DeepSeek-V3 tokenizer of
// the test data to `out` with `dsv3 synth`.
RunResult SynthTextModel(const std::string& out);

// Scheduler tests: a deterministic prompt of `length` ids below `vocab` (different per `seq`), and
// a request for n new tokens after it that does not stop at EOS.
std::vector<int32_t> SchedulerPrompt(int seq, int length, int64_t vocab);
ServeRequest SchedulerRequest(std::vector<int32_t> prompt, int64_t n);

// The message of the dsv3::Error that `f` throws, or "no error".
std::string ErrorMessage(const std::function<void()>& f);

// Asserts a clean failure: exit status 1 (not a signal), exactly one line "dsv3: error: ...",
// and that line names `what`.
void ExpectCleanError(const RunResult& r, const std::string& what);
// The same, naming each of `parts`.
void ExpectCleanError(const RunResult& r, std::initializer_list<std::string> parts);

}  // namespace dsv3::test
