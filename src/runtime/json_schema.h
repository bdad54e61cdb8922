// Structured output: decoding constrained to one JSON value of a JSON Schema (OpenAI's
// response_format {"type": "json_schema"}), for a subset of the schema language:
//
//   type                  a name or an array of names: object, array, string, number, integer,
//                         boolean, null (absent: any type)
//   properties, required  an object's listed properties; every required name must be listed
//   additionalProperties  true, false or absent
//   items                 one schema for every element of an array
//   enum, const           JSON values, matched by their compact serialization
//   title, description, default, examples, $schema, $id, $comment, deprecated, readOnly,
//   writeOnly: annotations, ignored
//
// `{}` and `true` accept any value. Every other keyword (pattern, format, minLength, minimum,
// anyOf, $ref, ...) is refused at compile time with a SchemaError naming where it is, rather than
// silently generating output the schema does not allow.
//
// The generated language is a subset of what the schema validates:
//  - an object with `properties` gets only those keys, whatever additionalProperties says (true
//    or absent lets an instance have other keys; ValidatesJsonSchema accepts them, the
//    recognizer never writes them). Each key at most once, in any order; '}' once every required
//    key is present, so an instance with fewer (optional) keys is still generated and valid.
//    Without `properties` the object is free (any keys, any values, duplicates not tracked, as
//    json_object), unless additionalProperties is false: then it is "{}".
//  - listed keys and enum / const values are written exactly as their compact serialization
//    (nlohmann's dump(): UTF-8 as is, object keys sorted), no whitespace inside an enum value.
//  - "integer" has no fraction or exponent (the validator, like JSON Schema, also takes 1.0).
//  - numbers stay below 1e308 in magnitude (integer digits + exponent <= 308): nlohmann, like
//    most parsers, refuses a number that overflows a double.
//  - at most kMaxDepth open containers (objects and arrays) in an instance, and at most
//    kMaxDepth levels of nested schemas, so that every schema fits; at most 64 properties per
//    object schema.
// The recognizer has no dead ends: every prefix it accepts can be completed, and ClosingBytes
// says by how few bytes, which the mask uses to keep room to finish within max_tokens.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/json.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {

// A compiled schema: immutable, shareable between threads.
struct JsonSchema;

struct SchemaError {
  std::string path;  // the offending keyword inside the schema, e.g. "properties.name.minLength"
  std::string message;
};

std::variant<std::shared_ptr<const JsonSchema>, SchemaError> CompileJsonSchema(const Json& schema);

// Whether a complete value validates against the schema (JSON Schema semantics for the subset
// above, including additional keys where allowed); otherwise *why (when given) says where, e.g.
// "people.0.id: expected integer". Instances nested deeper than kMaxDepth do not validate.
bool ValidatesJsonSchema(const JsonSchema& schema, const Json& value, std::string* why = nullptr);

// A byte-by-byte recognizer of one value matching a schema. Copying it copies only the open
// containers, so each candidate token can be tried on a copy.
class SchemaPrefix {
 public:
  static constexpr int kMaxDepth = 32;
  // `schema` is not owned and must outlive the recognizer.
  explicit SchemaPrefix(const JsonSchema* schema);
  SchemaPrefix(const SchemaPrefix& o) { *this = o; }
  SchemaPrefix& operator=(const SchemaPrefix& o) {
    if (this == &o) return *this;
    schema_ = o.schema_;
    head_ = o.head_;
    std::memcpy(frames_, o.frames_, sizeof(Frame) * head_.depth);
    return *this;
  }
  // Takes one byte; false (and the state unspecified) when it cannot continue a valid instance.
  bool Feed(uint8_t c);
  bool Feed(std::string_view bytes) {
    for (const char c : bytes) {
      if (!Feed(static_cast<uint8_t>(c))) return false;
    }
    return true;
  }
  // The bytes so far are a whole valid value (a top-level number, or an enum value such as 1
  // next to 12, may still go on; everything else only takes whitespace now).
  bool complete() const;
  // Complete, and nothing but whitespace can follow.
  bool done() const { return head_.mode == Mode::kDone; }
  // The fewest bytes that complete a valid value from here (0 when complete).
  int64_t ClosingBytes() const;
  // Inside a string whose characters are free (a string value, or a key of a free object; not a
  // listed key nor an enum value), between characters: bytes that are whole UTF-8 characters
  // without '"', '\' or control characters leave the state as it is.
  bool between_string_characters() const {
    return head_.mode == Mode::kString && head_.utf8_left == 0;
  }
  // The same state (for tests and deduplication).
  bool operator==(const SchemaPrefix& o) const {
    return schema_ == o.schema_ && head_ == o.head_ &&
           std::memcmp(frames_, o.frames_, sizeof(Frame) * head_.depth) == 0;
  }

 private:
  enum class Mode : uint8_t {
    kValue,         // a value of schema `node` must come (whitespace first allowed)
    kArrayFirst,    // after '[': an element (of schema `node`) or ']'
    kObjectFirst,   // after '{': a key or '}'
    kKey,           // after ',' in an object: a key
    kKeyMatch,      // inside a listed key: `pos` bytes of keys [lo, hi) matched
    kColon,         // after a key; the value's schema is `node`
    kAfter,         // after a value: ',' or the container's close
    kString,        // inside a free string (`key`: a free object's key)
    kEscape,        // after '\' in a string
    kUnicode,       // \u and hex_left more hex digits (`low`: of a low surrogate)
    kLowBackslash,  // after a high surrogate's escape: '\' of the low one
    kLowU,          // then 'u'
    kNumber,        // inside a number (`num` says where; `integer`: no fraction or exponent)
    kLiteral,       // inside true / false / null
    kEnum,          // inside an enum value of `node`: `pos` bytes of values [lo, hi) matched
    kDone,
  };
  enum class Num : uint8_t { kMinus, kZero, kInt, kDot, kFrac, kE, kESign, kExp };
  // An open container: its schema node and, for an object, which listed keys it has (bit i:
  // the node's i-th key in sorted order).
  struct Frame {
    uint64_t seen;
    uint16_t node;
    uint8_t array;  // 1 for '[', 0 for '{'
    uint8_t pad[5];
  };
  // Everything but the frames; fields zero-initialized so that == can compare them.
  struct Head {
    Mode mode = Mode::kValue;
    Num num = Num::kInt;
    uint8_t integer = 0, key = 0, low = 0;
    uint8_t utf8_left = 0, utf8_lo = 0x80, utf8_hi = 0xBF;
    uint8_t hex_left = 0, literal = 0, literal_pos = 0, depth = 0;
    uint16_t code = 0;  // the hex digits of a \u escape read so far
    // A number's integer digits and its exponent (saturating), which keep it below 1e308.
    uint16_t digits = 0, exp = 0;
    uint8_t exp_negative = 0;
    uint16_t node = 0;
    uint16_t lo = 0, hi = 0;
    uint32_t pos = 0;
    bool operator==(const Head&) const = default;
  };
  bool Value(uint8_t c);                    // c starts a value of schema head_.node
  void EndValue();                          // a value just ended
  bool Close(uint8_t c);                    // '}' or ']' closing the innermost container
  bool StartKey();                          // '"' of a key in the innermost object
  int64_t FrameCost(const Frame& f) const;  // closing f once its current member has ended
  int64_t KeyCost(const Frame& f, uint32_t pos, uint16_t lo, uint16_t hi) const;

  const JsonSchema* schema_;
  Head head_;
  Frame frames_[kMaxDepth];
};

// The vocabulary as JsonSchemaMask walks it: the tokens that can be part of an answer (valid, not
// special, not EOS, not empty, below `vocab`) sorted by their bytes, each with the length of the
// prefix it shares with the one before. Immutable and independent of the schema: build it once
// per tokenizer (10 to 20 ms for DeepSeek-V3's) and share it between masks and threads.
class SchemaVocabulary {
 public:
  // `vocab`: the model's vocabulary size (ids the tokenizer does not have are never allowed);
  // `eos`: the ids that end generation. `tokenizer` must outlive this.
  SchemaVocabulary(const Tokenizer& tokenizer, int64_t vocab, std::vector<int32_t> eos);
  int64_t vocab() const { return vocab_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const std::vector<int32_t>& eos() const { return eos_; }
  bool IsEos(int32_t id) const {
    for (const int32_t e : eos_) {
      if (e == id) return true;
    }
    return false;
  }
  // Every id below vocab that is not walked (EOS, special, invalid or empty tokens).
  const std::vector<int32_t>& others() const { return others_; }
  size_t longest() const { return longest_; }  // the longest walked token's bytes

  // Decides every walked token for a byte-level recognizer `State` (copyable): a token passes
  // when feed(state, byte) accepts each of its bytes, fed to copies of `start`, and fits(state
  // after it) holds. A prefix shared with the previous token is not fed again, and a prefix that
  // failed rules out the tokens that start with it. With `in_string`, plain tokens (whole UTF-8
  // characters without '"', '\' or control characters) leave the state as it is and pass exactly
  // when `plain_ok`. Tokens for which skip(id) holds are refused unfed. Refused tokens get -inf in
  // logits [vocab]; returns whether any passed. `stack` must hold longest() + 1 states.
  template <class State, class Feed, class Fits, class Skip>
  bool Walk(const State& start, std::vector<State>& stack, bool in_string, bool plain_ok,
            Feed&& feed, Fits&& fits, Skip&& skip, float* logits) const {
    constexpr float kOff = -std::numeric_limits<float>::infinity();
    constexpr size_t kNone = std::numeric_limits<size_t>::max();
    stack[0] = start;
    size_t have = 0;      // stack[0..have] hold the states after the previous token's bytes
    size_t fail = kNone;  // the previous token's first `fail` bytes cannot be fed
    bool any = false;
    const size_t n = ids_.size();
    for (size_t i = 0; i < n; ++i) {
      const size_t shared = lcp_[i];
      have = std::min(have, shared);
      if (shared < fail) fail = kNone;
      bool ok;
      if (in_string && plain_[i]) {
        ok = plain_ok;
      } else if (fail != kNone || skip(ids_[i])) {
        ok = false;  // starts with bytes that already failed, or is not fed at all
      } else {
        const char* bytes = bytes_.data() + offset_[i];
        const size_t size = offset_[i + 1] - offset_[i];
        ok = true;
        for (size_t k = have; k < size; ++k) {
          stack[k + 1] = stack[k];
          if (!feed(stack[k + 1], static_cast<uint8_t>(bytes[k]))) {
            fail = k + 1;
            ok = false;
            break;
          }
          have = k + 1;
        }
        ok = ok && fits(stack[size]);
      }
      if (!ok) logits[ids_[i]] = kOff;
      any |= ok;
    }
    return any;
  }

 private:
  friend class JsonSchemaMask;
  const Tokenizer& tokenizer_;
  int64_t vocab_;
  std::vector<int32_t> eos_;
  std::vector<int32_t> ids_;      // [N] the tokens, sorted by their bytes
  std::vector<uint32_t> offset_;  // [N + 1] ids_[i]'s bytes: bytes_[offset_[i], offset_[i + 1])
  std::string bytes_;             // every token's bytes, in that order
  std::vector<uint16_t> lcp_;     // [N] bytes ids_[i] shares with ids_[i - 1] (0 for i = 0)
  // [N] 1 for tokens of whole UTF-8 characters without '"', '\' or control characters: inside
  // a free string they change nothing, so they are decided without being fed.
  std::vector<uint8_t> plain_;
  std::vector<int32_t> others_;  // [vocab - N] every other id (EOS included)
  size_t longest_ = 0;           // the longest token's bytes
};

// The LogitMask of a json_schema (or json_object) answer: special tokens never, EOS only once the
// value is complete, and every token leaves room to finish within max_tokens.
//
// Apply walks the sorted vocabulary keeping the recognizer's state after each byte of the
// current token (stack_[k]: after k bytes), so a prefix shared by several tokens is fed once and a
// prefix that fails rules out, unfed, every token that starts with it.
class JsonSchemaMask : public LogitMask {
 public:
  // `max_tokens`: the answer's token budget. This one builds its own SchemaVocabulary (see
  // above for the arguments); a server should build that once and use the constructor below.
  JsonSchemaMask(const Tokenizer& tokenizer, int64_t vocab, std::vector<int32_t> eos,
                 int64_t max_tokens, std::shared_ptr<const JsonSchema> schema);
  JsonSchemaMask(std::shared_ptr<const SchemaVocabulary> vocabulary, int64_t max_tokens,
                 std::shared_ptr<const JsonSchema> schema);
  void Apply(float* logits) override;
  void Accept(int32_t token) override;
  const SchemaPrefix& state() const { return state_; }

 private:
  const std::shared_ptr<const SchemaVocabulary> vocabulary_;
  const std::shared_ptr<const JsonSchema> schema_;
  int64_t left_;   // tokens still allowed, this one included
  bool budgeted_;  // whether the budget could finish the value at all
  SchemaPrefix state_;
  std::vector<SchemaPrefix> stack_;  // [longest token + 1]
};

}  // namespace dsv3
