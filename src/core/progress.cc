#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

namespace dsv3 {

Progress::Progress(std::string label, uint64_t total, bool enabled, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

void Progress::Add(uint64_t amount) {
  done_ += amount;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - start_ < std::chrono::seconds(1)) return;  // short work stays quiet
  if (tty_) {
    if (now - last_print_ > std::chrono::milliseconds(200)) {
      last_print_ = now;
      Print(false);
    }
  } else {
    const int decile = total_ ? static_cast<int>(done_ * 10 / total_) : 10;
    if (decile != last_decile_ && decile < 10) {
      last_decile_ = decile;
      Print(false);
    }
  }
}

void Progress::Finish() {
  if (enabled_ && printed_) Print(true);
  enabled_ = false;
}

void Progress::Print(bool final_line) {
  printed_ = true;
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double pct =
      total_ ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100;
  const char* end = (final_line || !tty_) ? "\n" : "";
  if (!unit_.empty()) {
    std::fprintf(stderr, "%s%s: %5.1f%%  %llu/%llu %s  %.1f s%s", tty_ ? "\r" : "", label_.c_str(),
                 pct, static_cast<unsigned long long>(done_),
                 static_cast<unsigned long long>(total_), unit_.c_str(), secs, end);
    std::fflush(stderr);
    return;
  }
  const double mib = static_cast<double>(done_) / (1 << 20);
  std::fprintf(stderr, "%s%s: %5.1f%%  %.0f MiB  %.1f s  %.0f MiB/s%s", tty_ ? "\r" : "",
               label_.c_str(), pct, mib, secs, secs > 0 ? mib / secs : 0.0, end);
  std::fflush(stderr);
}

}  // namespace dsv3
