// Training data: a UTF-8 text file tokenized once into one token stream, cut into windows of
// T + 1 tokens (stride T: the last token of a window is the first of the next). The training
// order is a permutation of the windows per epoch, drawn from the run's seed and the epoch
// number alone, so batch k of a run is a function of (seed, k): resuming at step k needs nothing
// else. Validation reads every window once, in order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dsv3::train {

class TokenData {
 public:
  // Reads and tokenizes `path` (no BOS/EOS added; special-token text such as <|endoftext|>
  // becomes its token). Throws naming the file when it is missing, empty, not UTF-8 (with the
  // byte offset), or holds fewer than window + 1 tokens, or an id >= vocab_size.
  TokenData(const std::string& path, const Tokenizer& tokenizer, int64_t window,
            int64_t vocab_size);

  int64_t tokens() const { return static_cast<int64_t>(ids_.size()); }
  int64_t windows() const { return windows_; }  // (tokens - 1) / window
  int64_t window() const { return window_; }
  // Window w: ids [w * window, w * window + window + 1) into out.
  void Window(int64_t w, int32_t* out) const;
  // Training batch `step` of `batch` windows, shuffled per epoch: out [batch, window + 1].
  void TrainBatch(uint64_t seed, int64_t step, int64_t batch, int32_t* out);
  // The epoch that batch `step` starts in (for logs).
  double Epoch(int64_t step, int64_t batch) const;

 private:
  const std::vector<int64_t>& Order(uint64_t seed, int64_t epoch);
  std::string path_;
  std::vector<int32_t> ids_;
  int64_t window_ = 0, windows_ = 0;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace dsv3::train
