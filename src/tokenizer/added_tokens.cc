#include "tokenizer/added_tokens.h"

#include "core/unicode.h"

namespace dsv3 {

void AddedTokenMatcher::Add(std::string_view content, int32_t id, bool lstrip, bool rstrip) {
  if (content.empty()) return;
  int node = 0;
  for (char c : content) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
    auto it = edges_.find(key);
    if (it == edges_.end()) it = edges_.emplace(key, nodes_++).first;
    node = it->second;
  }
  terminals_[node] = Terminal{id, lstrip, rstrip};
  first_byte_[static_cast<uint8_t>(content[0])] = true;
}

int AddedTokenMatcher::Child(int node, uint8_t byte) const {
  auto it = edges_.find((static_cast<uint64_t>(node) << 8) | byte);
  return it == edges_.end() ? -1 : it->second;
}

bool AddedTokenMatcher::Find(std::string_view text, size_t start, Match* match) const {
  if (terminals_.empty()) return false;
  for (size_t i = start; i < text.size(); ++i) {
    if (!first_byte_[static_cast<uint8_t>(text[i])]) continue;
    int node = 0;
    size_t best_end = 0;
    const Terminal* best = nullptr;
    for (size_t j = i; j < text.size(); ++j) {
      node = Child(node, static_cast<uint8_t>(text[j]));
      if (node < 0) break;
      auto t = terminals_.find(node);
      if (t != terminals_.end()) {
        best = &t->second;
        best_end = j + 1;
      }
    }
    if (best == nullptr) continue;
    size_t begin = i, end = best_end;
    if (best->lstrip) {
      // Step back over whitespace code points (UTF-8 continuation bytes are 10xxxxxx).
      while (begin > start) {
        size_t k = begin - 1;
        while (k > start && (static_cast<uint8_t>(text[k]) & 0xC0) == 0x80) --k;
        size_t p = k;
        if (!IsUnicodeWhiteSpace(NextCodePoint(text, &p))) break;
        begin = k;
      }
    }
    if (best->rstrip) {
      while (end < text.size()) {
        size_t p = end;
        if (!IsUnicodeWhiteSpace(NextCodePoint(text, &p))) break;
        end = p;
      }
    }
    *match = Match{begin, end, best->id};
    return true;
  }
  return false;
}

}  // namespace dsv3
