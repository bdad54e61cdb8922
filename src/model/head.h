// What the main model and the MTP modules share around their decoder layers: the check of a
// step's token ids against the vocabulary and the context, and the output head (a final RmsNorm,
// then the vocabulary projection of the rows that need logits).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/aligned.h"
#include "kernels/matmul.h"
#include "model/config.h"
#include "model/step.h"

namespace dsv3 {

// Optional outputs of a forward pass, each filled when not empty (and then at least as large as
// stated; a smaller span is an error).
struct ForwardOutputs {
  std::span<float> logits = {};  // [T, vocab]: the logits at every position
  std::span<float> hidden = {};  // [T, D]: the hidden states (see each Forward for which)
};

// Fails (dsv3::Error) unless every id is in the vocabulary and positions past .. past + T - 1
// fit max_position_embeddings and the context's `capacity`. The id error names the position.
void CheckTokens(const Config& c, std::span<const int32_t> tokens, int64_t past, int64_t capacity);
// Fails unless `out` holds what `T` tokens need.
void CheckOutputs(const Config& c, const ForwardOutputs& out, int64_t T);

class OutputHead {
 public:
  OutputHead(const Config& c, int64_t max_batch);

  // xn [T, D] = RmsNorm(x [T, D], norm); logits [rows.size(), vocab] = head(xn[rows[i]]). Returns
  // xn (valid until the next call). The rows are read in place when consecutive.
  const float* Forward(const ForwardStep& step, const std::vector<float>& norm,
                       const kernels::WeightMatrix& head, const float* x,
                       std::span<const int64_t> rows, float* logits);
  size_t scratch_bytes() const { return sizeof(float) * (xn_.size() + rows_.size()); }

 private:
  const Config& c_;
  AlignedArray<float> xn_;    // [B, D] normalized rows
  AlignedArray<float> rows_;  // [B, D] the rows that need logits, when not consecutive
};

}  // namespace dsv3
