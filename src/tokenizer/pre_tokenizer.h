// The pre-tokenizer of tokenizer.json: a sequence of regex Split steps with the Isolated
// behaviour (each match and each gap between matches becomes a piece), each applied to the
// pieces of the step before, ending with ByteLevel (the byte-to-alphabet mapping, optionally
// after GPT-2's own split regex). Pieces are returned as views of the input, in order.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "tokenizer/regex.h"

namespace dsv3 {

class PreTokenizer {
 public:
  // `j` is tokenizer.json's "pre_tokenizer"; `what` names it in errors. Accepts ByteLevel alone
  // or a Sequence of Split steps ending with ByteLevel; anything else is an error naming the
  // unsupported type or option.
  static std::unique_ptr<PreTokenizer> FromJson(const Json& j, const std::string& what);

  // Appends the pieces of `text` (valid UTF-8) to `pieces`.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  void AddStep(const Json& step, const std::string& what, bool last);
  void SplitFrom(size_t step, std::string_view piece, std::vector<std::string_view>* out) const;

  std::vector<std::unique_ptr<Regex>> steps_;
};

}  // namespace dsv3
