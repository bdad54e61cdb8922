// A one-line progress meter on stderr for long work (checkpoint writing, tokenizer training).
// Silent for work that ends within a second; then, on a terminal it redraws in place, otherwise it
// prints a line every 10%. Amounts are bytes (shown in MiB) unless a unit is given, then counts
// ("1200/3839 merges").
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dsv3 {

class Progress {
 public:
  Progress(std::string label, uint64_t total, bool enabled = true, std::string unit = "");
  void Add(uint64_t amount);
  void Finish();

 private:
  void Print(bool final_line);
  std::string label_, unit_;  // unit_ empty: bytes
  uint64_t total_, done_ = 0;
  bool enabled_, tty_, printed_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_print_;
};

}  // namespace dsv3
