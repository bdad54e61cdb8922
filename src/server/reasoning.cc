#include "server/reasoning.h"

#include <algorithm>

namespace dsv3::server {
namespace {

constexpr std::string_view kOpen = "<think>", kClose = "</think>";

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

// The length of the longest suffix of `s` that is a proper prefix of `tag`.
size_t PartialTagAtEnd(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  }
  return 0;
}

}  // namespace

ReasoningSplitter::ReasoningSplitter(bool in_reasoning)
    : state_(in_reasoning ? State::kReasoning : State::kStart) {}

ReasoningSplitter::Parts ReasoningSplitter::Push(std::string_view text) {
  held_ += text;
  Parts out;
  Run(&out);
  return out;
}

void ReasoningSplitter::Run(Parts* out) {
  while (!held_.empty()) {
    switch (state_) {
      case State::kStart: {
        // Leading whitespace, then either <think> or the answer.
        const size_t first = held_.find_first_not_of(" \n\r\t");
        if (first == std::string::npos) return;
        const std::string_view rest = std::string_view(held_).substr(first);
        if (rest.substr(0, kOpen.size()) == kOpen) {
          held_.erase(0, first + kOpen.size());
          state_ = State::kReasoning;
        } else if (kOpen.substr(0, rest.size()) == rest) {
          return;  // maybe <think>, not complete yet
        } else {
          state_ = State::kContent;
        }
        break;
      }
      case State::kReasoning: {
        const size_t close = held_.find(kClose);
        if (close != std::string::npos) {
          out->reasoning += held_.substr(0, close);
          held_.erase(0, close + kClose.size());
          state_ = State::kAfterThink;
          break;
        }
        const size_t keep = PartialTagAtEnd(held_, kClose);
        out->reasoning += held_.substr(0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
        return;
      }
      case State::kAfterThink: {
        // The blank lines between </think> and the answer belong to neither.
        size_t n = 0;
        while (n < held_.size() && IsSpace(held_[n])) ++n;
        held_.erase(0, n);
        if (held_.empty()) return;
        state_ = State::kContent;
        break;
      }
      case State::kContent:
        out->content += held_;
        held_.clear();
        return;
    }
  }
}

ReasoningSplitter::Parts ReasoningSplitter::Finish() {
  Parts out;
  if (state_ == State::kReasoning) {
    out.reasoning.swap(held_);
  } else if (state_ != State::kAfterThink) {
    out.content.swap(held_);
  }
  held_.clear();
  return out;
}

bool OpensThink(std::string_view rendered) {
  while (!rendered.empty() && IsSpace(rendered.back())) rendered.remove_suffix(1);
  return rendered.size() >= kOpen.size() &&
         rendered.substr(rendered.size() - kOpen.size()) == kOpen;
}

}  // namespace dsv3::server
