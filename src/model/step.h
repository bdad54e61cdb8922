// One forward step through a decoder stack: which tokens run, where they go in the cache, and how
// the products run. Built once per step (by Context and MtpContext) and passed by const
// reference to the layer, attention and MoE forwards, which keep no per-step state of their own.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/aligned.h"
#include "kernels/matmul.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/trace.h"

namespace dsv3 {

// Tokens [first, first + count) of a step: one cache slot at consecutive positions, attending
// as a block.
struct StepSegment {
  int64_t first, count;
};

struct ForwardStep {
  int64_t T = 0;                          // tokens in the step
  std::span<const int64_t> positions;     // [T] each token's position in its slot
  std::span<const int32_t> slots;         // [T] each token's cache slot
  std::span<const StepSegment> segments;  // the tokens in runs of one slot
  const float* cos = nullptr;             // [T, R/2] RoPE angles at each token's position
  const float* sin = nullptr;             // [T, R/2]
  kernels::MatMulOptions matmul;          // path and precision of every product
  ForwardTrace* trace = nullptr;          // null: nothing observed
};

// The buffers behind a ForwardStep, allocated once for up to max_batch tokens.
class StepBuilder {
 public:
  StepBuilder(const Config& c, const RopeTable& rope, int64_t max_batch);

  // Token t of the next step goes to position positions()[t] of slot slots()[t]; fill both for
  // the step's T tokens, then Build.
  int64_t* positions() { return positions_.data(); }
  int32_t* slots() { return slots_.data(); }
  // Finds the segments and computes the RoPE angles of the T tokens. The step stays valid until
  // the next Build.
  const ForwardStep& Build(int64_t T, const kernels::MatMulOptions& matmul, ForwardTrace* trace);
  int64_t max_batch() const { return max_batch_; }
  size_t scratch_bytes() const;

 private:
  const RopeTable& rope_;
  const int64_t max_batch_, half_;
  std::vector<int64_t> positions_;     // [B]
  std::vector<int32_t> slots_;         // [B]
  std::vector<StepSegment> segments_;  // reserved for B
  AlignedArray<float> cos_, sin_;      // [B, R/2]
  ForwardStep step_;
};

}  // namespace dsv3
