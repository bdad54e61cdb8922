// libFuzzer entry point of one fuzz target binary: the one target linked beside it.
#include <cstdio>
#include <cstdlib>

#include "tests/fuzz/fuzz_target.h"

namespace {

dsv3::fuzz::TargetFn TheTarget() {
  if (dsv3::fuzz::Targets().size() != 1) {
    std::fprintf(stderr, "a fuzz binary must link exactly one target, this one has %zu\n",
                 dsv3::fuzz::Targets().size());
    std::abort();
  }
  return dsv3::fuzz::Targets()[0].run;
}

}  // namespace

// Runs the target once on an empty input before fuzzing starts, so its one-time setup (loading
// the tokenizer takes seconds under ASan) does not count against the per-input timeout.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  TheTarget()(nullptr, 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dsv3::fuzz::TargetFn run = TheTarget();
  run(data, size);
  return 0;
}
