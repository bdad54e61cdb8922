#include "model/head.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"

namespace dsv3 {

void CheckTokens(const Config& c, std::span<const int32_t> tokens, int64_t past, int64_t capacity) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  for (int64_t i = 0; i < T; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      Fail("token id {} at position {} is out of range: vocab_size is {}", tokens[i], past + i,
           c.vocab_size);
    }
  }
  if (past + T > c.max_position_embeddings) {
    Fail("{} tokens exceed max_position_embeddings ({})", past + T, c.max_position_embeddings);
  }
  if (past + T > capacity) {
    Fail("{} tokens exceed the context size of {} (raise --ctx-size)", past + T, capacity);
  }
}

void CheckOutputs(const Config& c, const ForwardOutputs& out, int64_t T) {
  auto check = [&](std::span<float> s, int64_t width, const char* what) {
    if (!s.empty() && static_cast<int64_t>(s.size()) < T * width) {
      Fail("{} output holds {} floats; {} tokens need {}", what, s.size(), T, T * width);
    }
  };
  check(out.logits, c.vocab_size, "logits");
  check(out.hidden, c.hidden_size, "hidden-state");
}

OutputHead::OutputHead(const Config& c, int64_t max_batch)
    : c_(c), xn_(max_batch * c.hidden_size), rows_(max_batch * c.hidden_size) {}

const float* OutputHead::Forward(const ForwardStep& step, const std::vector<float>& norm,
                                 const kernels::WeightMatrix& head, const float* x,
                                 std::span<const int64_t> rows, float* logits) {
  const int64_t T = step.T, D = c_.hidden_size, n = static_cast<int64_t>(rows.size());
  const float eps = static_cast<float>(c_.rms_norm_eps);
  float* xn = xn_.data();  // [T, D]
  for (int64_t t = 0; t < T; ++t) kernels::RmsNorm(x + t * D, norm.data(), eps, D, xn + t * D);
  if (n == 0) return xn;
  const float* in = xn + rows[0] * D;
  bool consecutive = true;
  for (int64_t i = 0; i < n; ++i) consecutive &= rows[i] == rows[0] + i;
  if (!consecutive) {
    for (int64_t i = 0; i < n; ++i) std::copy_n(xn + rows[i] * D, D, rows_.data() + i * D);
    in = rows_.data();
  }
  kernels::MatMul(head, in, D, n, logits, c_.vocab_size, step.matmul);
  return xn;
}

}  // namespace dsv3
