// Matching of added tokens (special and not) in raw text before pre-tokenization, as the Hugging
// Face library does: leftmost match first, the longest token among those starting there, with
// optional absorption of whitespace to the left (lstrip) or right (rstrip) of the token.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dsv3 {

class AddedTokenMatcher {
 public:
  struct Match {
    size_t begin, end;  // bytes of the text the token stands for (stripped whitespace included)
    int32_t id;
  };

  void Add(std::string_view content, int32_t id, bool lstrip, bool rstrip);
  bool empty() const { return terminals_.empty(); }

  // Finds the leftmost-longest token in text[start..]; whitespace absorbed by lstrip never
  // reaches before `start`.
  bool Find(std::string_view text, size_t start, Match* match) const;

 private:
  struct Terminal {
    int32_t id;
    bool lstrip, rstrip;
  };
  int Child(int node, uint8_t byte) const;

  // A byte trie: edges_[(node << 8) | byte] = child; node 0 is the root.
  std::unordered_map<uint64_t, int> edges_;
  std::unordered_map<int, Terminal> terminals_;  // node -> token ending there
  int nodes_ = 1;
  std::array<bool, 256> first_byte_{};
};

}  // namespace dsv3
