#include "model/step.h"

namespace dsv3 {

StepBuilder::StepBuilder(const Config& c, const RopeTable& rope, int64_t max_batch)
    : rope_(rope),
      max_batch_(max_batch),
      half_(c.qk_rope_head_dim / 2),
      positions_(static_cast<size_t>(max_batch)),
      slots_(static_cast<size_t>(max_batch)),
      cos_(max_batch * half_),
      sin_(max_batch * half_) {
  segments_.reserve(static_cast<size_t>(max_batch));
}

size_t StepBuilder::scratch_bytes() const { return sizeof(float) * (cos_.size() + sin_.size()); }

const ForwardStep& StepBuilder::Build(int64_t T, const kernels::MatMulOptions& matmul,
                                      ForwardTrace* trace) {
  segments_.clear();
  for (int64_t t = 0; t < T; ++t) {
    rope_.Angles(positions_[t], cos_.data() + t * half_, sin_.data() + t * half_);
    if (t > 0 && slots_[t] == slots_[t - 1] && positions_[t] == positions_[t - 1] + 1) {
      ++segments_.back().count;
    } else {
      segments_.push_back({t, 1});
    }
  }
  const size_t n = static_cast<size_t>(T);
  step_ = ForwardStep{.T = T,
                      .positions = std::span<const int64_t>(positions_.data(), n),
                      .slots = std::span<const int32_t>(slots_.data(), n),
                      .segments = segments_,
                      .cos = cos_.data(),
                      .sin = sin_.data(),
                      .matmul = matmul,
                      .trace = trace};
  return step_;
}

}  // namespace dsv3
