#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>
#include <set>

#include "core/error.h"
#include "core/unicode.h"

namespace dsv3 {
namespace {

// Unicode general categories, the only \p{...} properties accepted (scripts differ between the
// engines: PCRE2 uses Script_Extensions for \p{Han}, Oniguruma the Script property).
bool IsGeneralCategory(std::string_view name) {
  static const std::set<std::string_view> kNames = {
      "L",  "Lu", "Ll", "Lt", "Lm", "Lo", "M",  "Mn", "Mc", "Me", "N",  "Nd",
      "Nl", "No", "P",  "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S",  "Sm",
      "Sc", "Sk", "So", "Z",  "Zs", "Zl", "Zp", "C",  "Cc", "Cf", "Co", "Cn"};
  return kNames.count(name) > 0;
}

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread match state shared by all patterns: one match data block (only the whole-match
// offsets are read) and a JIT stack large enough for long runs of one character class.
struct ThreadMatchState {
  pcre2_match_data* data = nullptr;
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* context = nullptr;
  ThreadMatchState() {
    data = pcre2_match_data_create(1, nullptr);
    stack = pcre2_jit_stack_create(32 << 10, 64 << 20, nullptr);
    context = pcre2_match_context_create(nullptr);
    if (data == nullptr || stack == nullptr || context == nullptr) throw std::bad_alloc();
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchState() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(data);
  }
};

[[noreturn]] void RejectConstruct(const std::string& what, size_t at, std::string_view construct,
                                  std::string_view why) {
  Fail("{}: regex construct '{}' at offset {} is not supported ({})", what, construct, at, why);
}

ThreadMatchState& MatchState() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

std::string TranslateOnigurumaPattern(std::string_view p, const std::string& what) {
  auto reject = [&](size_t at, std::string_view construct, std::string_view why) {
    RejectConstruct(what, at, construct, why);
  };
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t class_open = 0;  // offset just after '[' or '[^' of the current class
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) reject(i, "\\", "pattern ends with a backslash");
      const char e = p[i + 1];
      switch (e) {
        case 's':
          out += in_class ? std::string(kWhiteSpaceClassBody)
                          : "[" + std::string(kWhiteSpaceClassBody) + "]";
          break;
        case 'S':
          out += in_class ? std::string(kNonWhiteSpaceClassBody)
                          : "[" + std::string(kNonWhiteSpaceClassBody) + "]";
          break;
        case 'w':
        case 'W':
        case 'b':
        case 'B':
          RejectConstruct(what, i, p.substr(i, 2),
                          "word characters differ between Oniguruma and PCRE2");
        case 'h':
        case 'H':
          RejectConstruct(what, i, p.substr(i, 2),
                          "hexadecimal digit in Oniguruma, horizontal space in PCRE2");
        case 'p':
        case 'P': {
          std::string_view name;
          size_t len = 2;
          if (i + 2 < p.size() && p[i + 2] == '{') {
            const size_t close = p.find('}', i + 3);
            if (close == std::string_view::npos) reject(i, p.substr(i), "unterminated \\p{");
            name = p.substr(i + 3, close - i - 3);
            len = close + 1 - i;
          } else if (i + 2 < p.size()) {
            name = p.substr(i + 2, 1);
            len = 3;
          }
          std::string_view bare = name;
          if (!bare.empty() && bare[0] == '^') bare.remove_prefix(1);
          if (!IsGeneralCategory(bare)) {
            reject(i, p.substr(i, len), "only Unicode general categories are supported");
          }
          out.append(p.substr(i, len));
          i += len - 1;
          continue;
        }
        default:
          out.append(p.substr(i, 2));
      }
      ++i;
      continue;
    }
    if (in_class) {
      if (c == '[') {
        reject(i, p.substr(i, 2),
               i + 1 < p.size() && p[i + 1] == ':' ? "POSIX classes differ between the engines"
                                                   : "nested classes are Oniguruma-only");
      }
      if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') {
        reject(i, "&&", "class intersection is Oniguruma-only");
      }
      if (c == ']' && i != class_open) in_class = false;
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      class_open = i + 1;  // a ']' right here is a literal
      continue;
    }
    if (c == '^' || c == '$') {
      reject(i, std::string(1, c), "line anchors in Oniguruma, subject anchors in PCRE2");
    }
    out.push_back(c);
  }
  if (in_class) reject(class_open, "[", "unterminated character class");
  return out;
}

Regex::Regex(std::string_view pattern, bool literal, const std::string& what) : what_(what) {
  const std::string translated =
      literal ? std::string(pattern) : TranslateOnigurumaPattern(pattern, what);
  int error = 0;
  PCRE2_SIZE offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options,
                        &error, &offset, nullptr);
  if (code_ == nullptr) {
    Fail("{}: regex does not compile at offset {}: {}", what, offset, Pcre2Message(error));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(code_); }

bool Regex::Find(std::string_view subject, size_t start, size_t* begin, size_t* end) const {
  ThreadMatchState& state = MatchState();
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const int rc = jit_ ? pcre2_jit_match(code_, s, subject.size(), start, PCRE2_NO_UTF_CHECK,
                                        state.data, state.context)
                      : pcre2_match(code_, s, subject.size(), start, PCRE2_NO_UTF_CHECK, state.data,
                                    state.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) Fail("{}: regex match failed: {}", what_, Pcre2Message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  *begin = ovector[0];
  *end = ovector[1];
  return true;
}

}  // namespace dsv3
