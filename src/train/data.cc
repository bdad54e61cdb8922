#include "train/data.h"

#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/json.h"
#include "core/unicode.h"

namespace dsv3::train {

TokenData::TokenData(const std::string& path, const Tokenizer& tokenizer, int64_t window,
                     int64_t vocab_size)
    : path_(path), window_(window) {
  const std::string text = ReadFileLimited(path, size_t{4} << 30);
  if (text.empty()) Fail("{}: the data file is empty", path);
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string::npos)
    Fail("{}: not UTF-8 text (invalid byte sequence at byte offset {})", path, bad);
  tokenizer.EncodeTo(text, &ids_);
  for (size_t i = 0; i < ids_.size(); ++i) {
    if (ids_[i] < 0 || ids_[i] >= vocab_size) {
      Fail(
          "{}: token id {} (at token {}) is outside the model's vocabulary of {} (config.json "
          "vocab_size): the tokenizer does not match the config",
          path, ids_[i], i, vocab_size);
    }
  }
  if (static_cast<int64_t>(ids_.size()) < window + 1) {
    Fail("{}: {} tokens, fewer than one training window of {} + 1", path, ids_.size(), window);
  }
  windows_ = (static_cast<int64_t>(ids_.size()) - 1) / window;
}

void TokenData::Window(int64_t w, int32_t* out) const {
  std::memcpy(out, ids_.data() + w * window_, (window_ + 1) * sizeof(int32_t));
}

// splitmix64: a fixed, portable generator (std::shuffle's use of the engine is not specified).
static uint64_t Mix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

const std::vector<int64_t>& TokenData::Order(uint64_t seed, int64_t epoch) {
  if (epoch == order_epoch_) return order_;
  order_.resize(windows_);
  std::iota(order_.begin(), order_.end(), 0);
  uint64_t state = seed * 0x2545F4914F6CDD1Dull + static_cast<uint64_t>(epoch) + 1;
  for (int64_t i = windows_ - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(Mix(state) % static_cast<uint64_t>(i + 1));
    std::swap(order_[i], order_[j]);
  }
  order_epoch_ = epoch;
  return order_;
}

void TokenData::TrainBatch(uint64_t seed, int64_t step, int64_t batch, int32_t* out) {
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t g = step * batch + b;
    const std::vector<int64_t>& order = Order(seed, g / windows_);
    Window(order[g % windows_], out + b * (window_ + 1));
  }
}

double TokenData::Epoch(int64_t step, int64_t batch) const {
  return static_cast<double>(step * batch) / static_cast<double>(windows_);
}

}  // namespace dsv3::train
