// A one-line progress meter on stderr for long work (checkpoint writing). Silent for work that
// ends within a second; then, on a terminal it redraws in place, otherwise it prints a line every
// 10%.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dsv3 {

class Progress {
 public:
  Progress(std::string label, uint64_t total, bool enabled = true);
  void Add(uint64_t amount);
  void Finish();

 private:
  void Print(bool final_line);
  std::string label_;
  uint64_t total_, done_ = 0;
  bool enabled_, tty_, printed_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_print_;
};

}  // namespace dsv3
