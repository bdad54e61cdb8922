// Regular expressions of the pre-tokenizer. tokenizer.json patterns are written for Oniguruma,
// the engine of Hugging Face's Rust library; they run here on PCRE2 (UTF + UCP, JIT compiled)
// after a rewrite of the constructs whose meaning differs between the two engines.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

struct pcre2_real_code_8;

namespace dsv3 {

// Rewrites an Oniguruma pattern for PCRE2 with the same matches:
// - \s and \S become explicit classes of Unicode White_Space (PCRE2's \s with UCP also matches
//   U+180E, which Oniguruma's does not);
// - constructs whose Unicode meaning differs between the engines (\w \W \h \H \b \B, POSIX
//   bracket classes, script properties such as \p{Han}, nested classes and && intersections,
//   and the ^ $ anchors, which are line anchors in Oniguruma) are rejected with an error naming
//   the construct and its offset. Unicode general categories (\p{L}, \p{Nd}, ...) and \d agree
//   between the two engines (checked for every code point) and pass through.
// `what` names the pattern in error messages.
std::string TranslateOnigurumaPattern(std::string_view pattern, const std::string& what);

class Regex {
 public:
  // literal = true matches `pattern` as a plain string. Throws dsv3::Error naming `what` when
  // the pattern does not compile.
  Regex(std::string_view pattern, bool literal, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the leftmost match in subject[start..]; the subject must be valid UTF-8 and `start`
  // on a character boundary. Thread-safe (match data and JIT stack are per thread).
  bool Find(std::string_view subject, size_t start, size_t* begin, size_t* end) const;

 private:
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
  std::string what_;
};

}  // namespace dsv3
