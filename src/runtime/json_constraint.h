// Structured output: decoding constrained to one JSON object (OpenAI's response_format
// {"type": "json_object"}). Before each token is sampled, every vocabulary entry whose bytes
// cannot continue the text towards a valid object is masked out (multi-character tokens and UTF-8
// split over tokens included; special tokens never pass, EOS only once the object is complete).
// The mask also keeps room to finish: a token is allowed only when the shortest way to close
// the object after it still fits in the tokens left, so an answer ends as valid JSON within
// max_tokens (when max_tokens allows "{}" at all).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {

// A byte-by-byte JSON recognizer for one object (RFC 8259; the top level must be an object),
// copyable in O(1) so that each candidate token can be tried on a copy.
class JsonPrefix {
 public:
  static constexpr int kMaxDepth = 64;  // deeper nesting is refused
  // Takes one byte; false (and the state unspecified) when it cannot continue valid JSON.
  bool Feed(uint8_t c);
  bool Feed(std::string_view bytes) {
    for (const char c : bytes) {
      if (!Feed(static_cast<uint8_t>(c))) return false;
    }
    return true;
  }
  // The object is closed (only whitespace may follow).
  bool complete() const { return mode_ == Mode::kDone; }
  // The fewest bytes that complete the object from here (0 when complete).
  int64_t ClosingBytes() const;
  // Inside a string, between characters: bytes that are whole UTF-8 characters without '"', '\'
  // or control characters leave the state as it is.
  bool between_string_characters() const { return mode_ == Mode::kString && utf8_left_ == 0; }

 private:
  enum class Mode : uint8_t {
    kStart,        // before the object
    kValue,        // a value must come
    kArrayFirst,   // after '[': a value or ']'
    kObjectFirst,  // after '{': a key or '}'
    kKey,          // after ',' in an object: a key
    kColon,        // after a key
    kAfter,        // after a value: ',' or the container's close
    kString,       // inside a string
    kEscape,       // after '\' in a string
    kUnicode,      // \u and hex_left_ more hex digits
    kNumber,       // inside a number (number_ says where)
    kLiteral,      // inside true / false / null
    kDone,
  };
  enum class Num : uint8_t { kMinus, kZero, kInt, kDot, kFrac, kE, kESign, kExp };
  bool Value(uint8_t c);  // c starts a value (mode kValue / kArrayFirst)
  void EndValue();        // a value just ended
  bool Close(uint8_t c);  // '}' or ']' closing the innermost container

  Mode mode_ = Mode::kStart;
  Num number_ = Num::kInt;
  bool key_ = false;                         // the string is an object key
  uint8_t utf8_left_ = 0;                    // continuation bytes still expected in a string
  uint8_t utf8_lo_ = 0x80, utf8_hi_ = 0xBF;  // the next continuation byte's range
  uint8_t hex_left_ = 0;
  uint8_t literal_ = 0, literal_pos_ = 0;  // which of true / false / null, bytes matched
  uint8_t depth_ = 0;
  char stack_[kMaxDepth] = {};  // '{' or '[' per open container
};

// The LogitMask of a json_object answer.
class JsonObjectMask : public LogitMask {
 public:
  // `vocab`: the model's vocabulary size (ids the tokenizer does not have are never allowed);
  // `eos`: the ids that end generation; `max_tokens`: the answer's token budget.
  JsonObjectMask(const Tokenizer& tokenizer, int64_t vocab, std::vector<int32_t> eos,
                 int64_t max_tokens);
  void Apply(float* logits) override;
  void Accept(int32_t token) override;
  const JsonPrefix& state() const { return state_; }

 private:
  bool IsEos(int32_t id) const;
  const Tokenizer& tokenizer_;
  const int64_t vocab_;
  const std::vector<int32_t> eos_;
  int64_t left_;   // tokens still allowed, this one included
  bool budgeted_;  // whether the budget could close the object at all
  JsonPrefix state_;
  // [vocab] 1 for tokens of whole UTF-8 characters without '"', '\' or control characters:
  // inside a string they change nothing, so they are decided without being fed.
  std::vector<uint8_t> plain_;
};

}  // namespace dsv3
