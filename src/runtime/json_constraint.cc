#include "runtime/json_constraint.h"

#include <algorithm>
#include <limits>

#include "core/unicode.h"

namespace dsv3 {
namespace {
constexpr std::string_view kLiterals[3] = {"true", "false", "null"};
bool IsSpace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
bool IsHex(uint8_t c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
}  // namespace

void JsonPrefix::EndValue() { mode_ = depth_ == 0 ? Mode::kDone : Mode::kAfter; }

bool JsonPrefix::Close(uint8_t c) {
  if (depth_ == 0 || stack_[depth_ - 1] != (c == '}' ? '{' : '[')) return false;
  --depth_;
  EndValue();
  return true;
}

bool JsonPrefix::Value(uint8_t c) {
  switch (c) {
    case '{':
    case '[':
      if (depth_ == kMaxDepth) return false;
      stack_[depth_++] = static_cast<char>(c);
      mode_ = c == '{' ? Mode::kObjectFirst : Mode::kArrayFirst;
      return true;
    case '"':
      mode_ = Mode::kString;
      key_ = false;
      return true;
    case '-':
      mode_ = Mode::kNumber;
      number_ = Num::kMinus;
      return true;
    case 't':
    case 'f':
    case 'n':
      mode_ = Mode::kLiteral;
      literal_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
      literal_pos_ = 1;
      return true;
    default:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kNumber;
      number_ = c == '0' ? Num::kZero : Num::kInt;
      return true;
  }
}

bool JsonPrefix::Feed(uint8_t c) {
  switch (mode_) {
    case Mode::kStart:
      if (IsSpace(c)) return true;
      return c == '{' && Value(c);
    case Mode::kValue:
      return IsSpace(c) || Value(c);
    case Mode::kArrayFirst:
      if (IsSpace(c)) return true;
      return c == ']' ? Close(c) : Value(c);
    case Mode::kObjectFirst:
    case Mode::kKey:
      if (IsSpace(c)) return true;
      if (c == '}' && mode_ == Mode::kObjectFirst) return Close(c);
      if (c != '"') return false;
      mode_ = Mode::kString;
      key_ = true;
      return true;
    case Mode::kColon:
      if (IsSpace(c)) return true;
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kAfter:
      if (IsSpace(c)) return true;
      if (c == ',') {
        mode_ = stack_[depth_ - 1] == '{' ? Mode::kKey : Mode::kValue;
        return true;
      }
      return (c == '}' || c == ']') && Close(c);
    case Mode::kString:
      if (utf8_left_ > 0) {  // inside a multi-byte character
        if (c < utf8_lo_ || c > utf8_hi_) return false;
        --utf8_left_;
        utf8_lo_ = 0x80, utf8_hi_ = 0xBF;
        return true;
      }
      if (c == '"') {
        if (key_) {
          mode_ = Mode::kColon;
        } else {
          EndValue();
        }
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return false;  // control characters must be escaped
      if (c < 0x80) return true;
      // UTF-8 lead bytes and the range of the byte after them (no overlongs, no surrogates).
      if (c >= 0xC2 && c <= 0xDF) {
        utf8_left_ = 1;
      } else if (c >= 0xE0 && c <= 0xEF) {
        utf8_left_ = 2;
        if (c == 0xE0) utf8_lo_ = 0xA0;
        if (c == 0xED) utf8_hi_ = 0x9F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        utf8_left_ = 3;
        if (c == 0xF0) utf8_lo_ = 0x90;
        if (c == 0xF4) utf8_hi_ = 0x8F;
      } else {
        return false;
      }
      return true;
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kUnicode;
        hex_left_ = 4;
        return true;
      }
      if (std::string_view("\"\\/bfnrt").find(static_cast<char>(c)) == std::string_view::npos)
        return false;
      mode_ = Mode::kString;
      return true;
    case Mode::kUnicode:
      if (!IsHex(c)) return false;
      if (--hex_left_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kNumber:
      switch (number_) {
        case Num::kMinus:
          if (!IsDigit(c)) return false;
          number_ = c == '0' ? Num::kZero : Num::kInt;
          return true;
        case Num::kZero:
        case Num::kInt:
        case Num::kFrac:
        case Num::kExp:
          if (IsDigit(c) && number_ != Num::kZero) return true;
          if (c == '.' && (number_ == Num::kZero || number_ == Num::kInt)) {
            number_ = Num::kDot;
            return true;
          }
          if ((c == 'e' || c == 'E') && number_ != Num::kExp) {
            number_ = Num::kE;
            return true;
          }
          EndValue();  // the number ended; c belongs to what follows
          return Feed(c);
        case Num::kDot:
          if (!IsDigit(c)) return false;
          number_ = Num::kFrac;
          return true;
        case Num::kE:
          if (c == '+' || c == '-') {
            number_ = Num::kESign;
            return true;
          }
          [[fallthrough]];
        case Num::kESign:
          if (!IsDigit(c)) return false;
          number_ = Num::kExp;
          return true;
      }
      return false;
    case Mode::kLiteral: {
      const std::string_view lit = kLiterals[literal_];
      if (c != static_cast<uint8_t>(lit[literal_pos_])) return false;
      if (++literal_pos_ == lit.size()) EndValue();
      return true;
    }
    case Mode::kDone:
      return IsSpace(c);
  }
  return false;
}

int64_t JsonPrefix::ClosingBytes() const {
  int64_t n = depth_;  // one closing bracket per open container
  switch (mode_) {
    case Mode::kStart:
      return 2;  // {}
    case Mode::kValue:
      return n + 1;  // 0
    case Mode::kKey:
      return n + 4;  // "":0
    case Mode::kColon:
      return n + 2;  // :0
    case Mode::kString: {
      const int64_t quote = utf8_left_ + 1;
      return n + quote + (key_ ? 2 : 0);
    }
    case Mode::kEscape:
      return n + 2 + (key_ ? 2 : 0);  // n"
    case Mode::kUnicode:
      return n + hex_left_ + 1 + (key_ ? 2 : 0);
    case Mode::kNumber:
      return n + (number_ == Num::kMinus || number_ == Num::kDot || number_ == Num::kE ||
                          number_ == Num::kESign
                      ? 1
                      : 0);
    case Mode::kLiteral:
      return n + static_cast<int64_t>(kLiterals[literal_].size()) - literal_pos_;
    case Mode::kArrayFirst:
    case Mode::kObjectFirst:
    case Mode::kAfter:
      return n;
    case Mode::kDone:
      return 0;
  }
  return n;
}

JsonObjectMask::JsonObjectMask(const Tokenizer& tokenizer, int64_t vocab, std::vector<int32_t> eos,
                               int64_t max_tokens)
    : tokenizer_(tokenizer),
      vocab_(vocab),
      eos_(std::move(eos)),
      left_(max_tokens),
      budgeted_(max_tokens >= JsonPrefix().ClosingBytes() + 1),
      plain_(static_cast<size_t>(vocab), 0) {
  for (int64_t v = 0; v < vocab; ++v) {
    const int32_t id = static_cast<int32_t>(v);
    if (!tokenizer.IsValidId(id) || tokenizer.IsSpecial(id) || IsEos(id)) continue;
    const std::string_view b = tokenizer.TokenBytes(id);
    if (b.empty() || FindInvalidUtf8(b) != std::string_view::npos) continue;
    bool plain = true;
    for (const char c : b) {
      const uint8_t u = static_cast<uint8_t>(c);
      plain &= u >= 0x20 && u != '"' && u != '\\';
    }
    plain_[v] = plain;
  }
}

bool JsonObjectMask::IsEos(int32_t id) const {
  return std::find(eos_.begin(), eos_.end(), id) != eos_.end();
}

void JsonObjectMask::Apply(float* logits) {
  constexpr float kOff = -std::numeric_limits<float>::infinity();
  const bool done = state_.complete();
  // Inside a string, plain tokens keep the state, so they all pass or fail the budget together.
  const bool in_string = state_.between_string_characters();
  const bool plain_ok = !budgeted_ || state_.ClosingBytes() + 1 <= left_ - 1;
  bool any = false;
  for (int64_t v = 0; v < vocab_; ++v) {
    const int32_t id = static_cast<int32_t>(v);
    bool ok;
    if (in_string && plain_[v]) {
      ok = plain_ok;
    } else if (IsEos(id)) {
      ok = done;
    } else if (done || !tokenizer_.IsValidId(id) || tokenizer_.IsSpecial(id)) {
      ok = false;  // once complete, only EOS: the answer ends promptly
    } else {
      JsonPrefix next = state_;
      const std::string_view bytes = tokenizer_.TokenBytes(id);
      // After this token, closing the object and EOS must fit in the tokens left.
      ok = !bytes.empty() && next.Feed(bytes) &&
           (!budgeted_ || next.ClosingBytes() + 1 <= left_ - 1);
    }
    if (!ok) logits[v] = kOff;
    any |= ok;
  }
  if (!any) {  // cannot happen with a byte-level vocabulary; end rather than emit garbage
    for (const int32_t e : eos_) {
      if (e >= 0 && e < vocab_) logits[e] = 0;
    }
  }
}

void JsonObjectMask::Accept(int32_t token) {
  --left_;
  if (!IsEos(token) && tokenizer_.IsValidId(token)) state_.Feed(tokenizer_.TokenBytes(token));
}

}  // namespace dsv3
