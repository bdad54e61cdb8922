// Lexer and parser of the Jinja subset. The lexer applies Jinja2's whitespace control to the
// text between tags ("-" markers, trim_blocks, lstrip_blocks, "+" to opt out); the parser is a
// recursive descent over Jinja2's expression grammar, with the same operator precedence.
#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "core/unicode.h"
#include "jinja/ast.h"

namespace dsv3::jinja {
namespace {

enum class Tok {
  kText,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type;
  size_t offset;
  std::string text;  // text, name, string value, operator
  int64_t int_value = 0;
  double float_value = 0;
};

// Python's str.isspace() set: Unicode White_Space plus the separators U+001C..U+001F.
bool IsPySpace(uint32_t cp) { return IsUnicodeWhiteSpace(cp) || (cp >= 0x1C && cp <= 0x1F); }

// Length of `s` without its trailing Python whitespace.
size_t RStripLength(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    size_t p = start;
    if (!IsPySpace(NextCodePoint(s, &p))) break;
    end = start;
  }
  return end;
}

// First offset at or after `pos` that is not Python whitespace.
size_t SkipSpace(std::string_view s, size_t pos) {
  while (pos < s.size()) {
    size_t p = pos;
    if (!IsPySpace(NextCodePoint(s, &p))) break;
    pos = p;
  }
  return pos;
}

bool IsNameStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsNameChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

class Lexer {
 public:
  Lexer(const std::string& src, const std::string& what, const Options& options)
      : src_(src), what_(what), options_(options) {}

  std::vector<Token> Run() {
    size_t pos = 0;
    bool line_starting = true;  // the previous tag ended a line (or nothing came before)
    while (pos < src_.size()) {
      const size_t start = FindTagStart(pos);
      std::string_view text(src_.data() + pos, (start == npos ? src_.size() : start) - pos);
      if (start == npos) {
        EmitText(pos, text);
        break;
      }
      const char kind = src_[start + 1];  // '{' variable, '%' block, '#' comment
      const char marker = start + 2 < src_.size() ? src_[start + 2] : 0;
      if (marker == '-') {
        text = text.substr(0, RStripLength(text));
      } else if (marker != '+' && kind != '{' && options_.lstrip_blocks) {
        // lstrip_blocks: drop spaces and tabs between the start of the line and the tag.
        const size_t nl = text.rfind('\n');
        const size_t line = nl == std::string_view::npos ? 0 : nl + 1;
        if ((nl != std::string_view::npos || line_starting) &&
            text.find_first_not_of(" \t", line) == std::string_view::npos) {
          text = text.substr(0, line);
        }
      }
      EmitText(pos, text);
      size_t p = start + 2 + (marker == '-' || marker == '+' ? 1 : 0);
      char end_marker = 0;
      if (kind == '#') {
        const size_t close = src_.find("#}", p);
        if (close == npos) Error(start, "comment is not closed: expected '#}'");
        if (close > p && (src_[close - 1] == '-' || src_[close - 1] == '+')) {
          end_marker = src_[close - 1];
        }
        pos = AfterTag(close + 2, end_marker, /*block=*/true);
      } else if (kind == '%' && IsRawTag(p)) {
        pos = LexRaw(start, p);
      } else {
        const bool block = kind == '%';
        tokens_.push_back({block ? Tok::kBlockBegin : Tok::kVarBegin, start, ""});
        p = LexInside(start, p, block, &end_marker);
        pos = AfterTag(p, end_marker, block);
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    tokens_.push_back({Tok::kEof, src_.size(), ""});
    return std::move(tokens_);
  }

 private:
  static constexpr size_t npos = std::string::npos;

  [[noreturn]] void Error(size_t offset, const std::string& message) {
    Fail("{}: {}: {}", what_, Position(src_, offset), message);
  }

  size_t FindTagStart(size_t pos) const {
    for (size_t i = src_.find('{', pos); i != npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return npos;
  }

  void EmitText(size_t offset, std::string_view text) {
    if (!text.empty()) tokens_.push_back({Tok::kText, offset, std::string(text)});
  }

  // Whitespace handling after a tag that ends at `p`: "-" strips all whitespace, otherwise
  // trim_blocks drops one newline after block tags and comments (not after "+").
  size_t AfterTag(size_t p, char end_marker, bool block) const {
    if (end_marker == '-') return SkipSpace(src_, p);
    if (block && end_marker != '+' && options_.trim_blocks && p < src_.size() && src_[p] == '\n') {
      return p + 1;
    }
    return p;
  }

  // {% raw %} (with optional "-" markers): the text up to {% endraw %} is kept verbatim.
  bool IsRawTag(size_t p) const {
    p = SkipSpace(src_, p);
    if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && IsNameChar(src_[p + 3]))) {
      return false;
    }
    p = SkipSpace(src_, p + 3);
    return src_.compare(p, 2, "%}") == 0 || src_.compare(p, 3, "-%}") == 0;
  }

  size_t LexRaw(size_t start, size_t p) {
    p = SkipSpace(src_, p) + 3;
    p = SkipSpace(src_, p);
    const bool strip_after_open = src_[p] == '-';
    p = AfterTag(p + (strip_after_open ? 3 : 2), strip_after_open ? '-' : 0, true);
    for (size_t i = src_.find("{%", p); i != npos; i = src_.find("{%", i + 2)) {
      size_t q = i + 2;
      const bool strip_before = q < src_.size() && src_[q] == '-';
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
      q = SkipSpace(src_, q);
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q = SkipSpace(src_, q + 6);
      char end_marker = 0;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) end_marker = src_[q++];
      if (src_.compare(q, 2, "%}") != 0) continue;
      std::string_view text(src_.data() + p, i - p);
      if (strip_before) text = text.substr(0, RStripLength(text));
      EmitText(p, text);
      return AfterTag(q + 2, end_marker, true);
    }
    Error(start, "'raw' is not closed: expected '{% endraw %}'");
  }

  // Lexes the expression tokens of a tag up to its closing delimiter (not inside brackets);
  // returns the offset after the delimiter and sets *end_marker to '-', '+' or 0.
  size_t LexInside(size_t tag_start, size_t p, bool block, char* end_marker) {
    const char* close = block ? "%}" : "}}";
    const Tok end_tok = block ? Tok::kBlockEnd : Tok::kVarEnd;
    int depth = 0;
    while (true) {
      while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
      if (p >= src_.size()) {
        Error(tag_start, fmt::format("tag is not closed: expected '{}'", close));
      }
      if (depth == 0) {
        const char c = src_[p];
        if ((c == '-' || (c == '+' && block)) && src_.compare(p + 1, 2, close) == 0) {
          *end_marker = c;
          tokens_.push_back({end_tok, p, ""});
          return p + 3;
        }
        if (src_.compare(p, 2, close) == 0) {
          *end_marker = 0;
          tokens_.push_back({end_tok, p, ""});
          return p + 2;
        }
      }
      p = LexToken(p, &depth);
    }
  }

  size_t LexToken(size_t p, int* depth) {
    const char c = src_[p];
    if (IsNameStart(c)) {
      size_t e = p + 1;
      while (e < src_.size() && IsNameChar(src_[e])) ++e;
      tokens_.push_back({Tok::kName, p, src_.substr(p, e - p)});
      return e;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) return LexNumber(p);
    if (c == '\'' || c == '"') return LexString(p);
    static const char* kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*",
                                 "/",  "%",  "~",  "|",  ".",  ",",  ":", "(", ")",
                                 "[",  "]",  "{",  "}",  "<",  ">",  "="};
    for (const char* op : kOps) {
      const size_t n = std::char_traits<char>::length(op);
      if (src_.compare(p, n, op) == 0) {
        if (n == 1 && (c == '(' || c == '[' || c == '{')) ++*depth;
        if (n == 1 && (c == ')' || c == ']' || c == '}') && *depth > 0) --*depth;
        tokens_.push_back({Tok::kOp, p, op});
        return p + n;
      }
    }
    size_t e = p;
    NextCodePoint(src_, &e);
    Error(p, fmt::format("unexpected character '{}'", src_.substr(p, e - p)));
  }

  size_t LexNumber(size_t p) {
    size_t e = p;
    auto digits = [&] {
      while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) ||
                                 (src_[e] == '_' && e + 1 < src_.size() &&
                                  std::isdigit(static_cast<unsigned char>(src_[e + 1]))))) {
        ++e;
      }
    };
    digits();
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      digits();
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t f = e + 1;
      if (f < src_.size() && (src_[f] == '+' || src_[f] == '-')) ++f;
      if (f < src_.size() && std::isdigit(static_cast<unsigned char>(src_[f]))) {
        is_float = true;
        e = f;
        digits();
      }
    }
    std::string text = src_.substr(p, e - p);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    Token t{is_float ? Tok::kFloat : Tok::kInt, p, text};
    try {
      if (is_float) {
        t.float_value = std::stod(text);
      } else {
        t.int_value = std::stoll(text);
      }
    } catch (const std::exception&) {
      Error(p, "number '" + text + "' is out of range");
    }
    tokens_.push_back(std::move(t));
    return e;
  }

  // A quoted string with Python's escapes (\n \t \\ \' \" \xHH \uHHHH \UHHHHHHHH, octal, ...).
  size_t LexString(size_t p) {
    const char quote = src_[p];
    std::string value;
    size_t i = p + 1;
    auto hex = [&](size_t at, int n) -> uint32_t {
      if (at + n > src_.size()) Error(at, "truncated escape sequence");
      uint32_t v = 0;
      for (int k = 0; k < n; ++k) {
        const char h = src_[at + k];
        if (!std::isxdigit(static_cast<unsigned char>(h))) Error(at, "bad escape sequence");
        v = v * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                               ? h - '0'
                                               : std::tolower(h) - 'a' + 10);
      }
      return v;
    };
    while (true) {
      if (i >= src_.size()) Error(p, "string is not closed");
      const char c = src_[i];
      if (c == quote) break;
      if (c != '\\') {
        value.push_back(c);
        ++i;
        continue;
      }
      if (i + 1 >= src_.size()) Error(p, "string is not closed");
      const char e = src_[i + 1];
      i += 2;
      switch (e) {
        case 'n':
          value += '\n';
          break;
        case 't':
          value += '\t';
          break;
        case 'r':
          value += '\r';
          break;
        case 'b':
          value += '\b';
          break;
        case 'f':
          value += '\f';
          break;
        case 'v':
          value += '\v';
          break;
        case 'a':
          value += '\a';
          break;
        case '\\':
          value += '\\';
          break;
        case '\'':
          value += '\'';
          break;
        case '"':
          value += '"';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          AppendCodePoint(hex(i, 2), i, &value);
          i += 2;
          break;
        case 'u':
          AppendCodePoint(hex(i, 4), i, &value);
          i += 4;
          break;
        case 'U':
          AppendCodePoint(hex(i, 8), i, &value);
          i += 8;
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && i < src_.size() && src_[i] >= '0' && src_[i] <= '7'; ++k) {
              v = v * 8 + static_cast<uint32_t>(src_[i++] - '0');
            }
            AppendCodePoint(v, i, &value);
          } else {
            value += '\\';  // Python keeps unknown escapes as written
            value += e;
          }
      }
    }
    tokens_.push_back({Tok::kString, p, std::move(value)});
    return i + 1;
  }

  void AppendCodePoint(uint32_t cp, size_t at, std::string* out) {
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      Error(at, fmt::format("escape U+{:04X} is not a Unicode scalar value", cp));
    }
    AppendUtf8(cp, out);
  }

  const std::string& src_;
  const std::string& what_;
  const Options& options_;
  std::vector<Token> tokens_;
};

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& src, const std::string& what,
         const Options& options)
      : tokens_(std::move(tokens)), src_(src), what_(what), max_depth_(options.max_depth) {}

  std::unique_ptr<Body> ParseTemplate() {
    auto body = std::make_unique<Body>();
    ParseBody(body.get(), {}, "", 0);
    return body;
  }

 private:
  // Bounds the recursion of the parser (and so of the evaluator) on deeply nested input.
  struct DepthGuard {
    Parser* p;
    DepthGuard(Parser* parser, size_t offset) : p(parser) {
      if (++p->depth_ > p->max_depth_) {
        p->Error(offset, fmt::format("nested more than {} levels deep", p->max_depth_));
      }
    }
    ~DepthGuard() { --p->depth_; }
  };

  [[noreturn]] void Error(size_t offset, const std::string& message) const {
    Fail("{}: {}: {}", what_, Position(src_, offset), message);
  }

  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Peek() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  void Advance() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool IsOp(const char* op) const { return Cur().type == Tok::kOp && Cur().text == op; }
  bool IsName(const char* name) const { return Cur().type == Tok::kName && Cur().text == name; }

  static std::string Describe(const Token& t) {
    switch (t.type) {
      case Tok::kText:
        return "text";
      case Tok::kVarBegin:
        return "'{{'";
      case Tok::kVarEnd:
        return "'}}'";
      case Tok::kBlockBegin:
        return "'{%'";
      case Tok::kBlockEnd:
        return "'%}'";
      case Tok::kName:
        return "'" + t.text + "'";
      case Tok::kString:
        return "a string";
      case Tok::kInt:
      case Tok::kFloat:
        return "number " + t.text;
      case Tok::kOp:
        return "'" + t.text + "'";
      case Tok::kEof:
        return "the end of the template";
    }
    return "?";
  }

  void ExpectOp(const char* op) {
    if (!IsOp(op)) Error(Cur().offset, fmt::format("expected '{}', found {}", op, Describe(Cur())));
    Advance();
  }
  std::string ExpectName() {
    if (Cur().type != Tok::kName) {
      Error(Cur().offset, "expected a name, found " + Describe(Cur()));
    }
    std::string name = Cur().text;
    Advance();
    return name;
  }
  void ExpectBlockEnd() {
    if (Cur().type != Tok::kBlockEnd) {
      Error(Cur().offset, "expected '%}', found " + Describe(Cur()));
    }
    Advance();
  }

  static std::string Quoted(const std::vector<std::string>& names) {
    std::string list;
    for (const std::string& n : names) list += (list.empty() ? "'" : " or '") + n + "'";
    return list;
  }

  ExprPtr Make(ExprKind kind, size_t offset) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->offset = offset;
    return e;
  }

  // Parses nodes until a block tag named in `ends` (returned, with "{%" and the name
  // consumed) or, at the top level (`ends` empty), the end of the template.
  std::string ParseBody(Body* body, const std::vector<std::string>& ends,
                        const std::string& construct, size_t start) {
    DepthGuard guard(this, start);
    while (true) {
      const Token& t = Cur();
      switch (t.type) {
        case Tok::kEof:
          if (ends.empty()) return "";
          Error(start, fmt::format("'{}' is not closed: expected {}", construct, Quoted(ends)));
        case Tok::kText: {
          auto n = std::make_unique<Node>();
          n->kind = NodeKind::kText;
          n->offset = t.offset;
          n->text = t.text;
          body->push_back(std::move(n));
          Advance();
          break;
        }
        case Tok::kVarBegin: {
          auto n = std::make_unique<Node>();
          n->kind = NodeKind::kOutput;
          n->offset = t.offset;
          Advance();
          n->expr = ParseTuple(true);
          if (Cur().type != Tok::kVarEnd) {
            Error(Cur().offset, "expected '}}', found " + Describe(Cur()));
          }
          Advance();
          body->push_back(std::move(n));
          break;
        }
        case Tok::kBlockBegin: {
          const Token& name = Peek();
          if (name.type != Tok::kName) Error(name.offset, "expected a tag name after '{%'");
          if (std::find(ends.begin(), ends.end(), name.text) != ends.end()) {
            Advance();
            Advance();
            return name.text;
          }
          if (!ends.empty() &&
              (name.text.rfind("end", 0) == 0 || name.text == "else" || name.text == "elif")) {
            Error(name.offset,
                  fmt::format("unexpected '{}': the '{}' at {} is not closed; it "
                              "expects {}",
                              name.text, construct, Position(src_, start), Quoted(ends)));
          }
          Advance();
          body->push_back(ParseStatement());
          break;
        }
        default:
          Error(t.offset, "unexpected " + Describe(t));
      }
    }
  }

  NodePtr ParseStatement() {
    const Token& tag = Cur();
    const size_t offset = tag.offset;
    const std::string name = tag.text;
    auto n = std::make_unique<Node>();
    n->offset = offset;
    Advance();
    if (name == "if") {
      n->kind = NodeKind::kIf;
      ExprPtr cond = ParseExpression(true);
      ExpectBlockEnd();
      while (true) {
        Body body;
        const std::string end = ParseBody(&body, {"elif", "else", "endif"}, "if", offset);
        n->branches.emplace_back(std::move(cond), std::move(body));
        if (end == "elif") {
          cond = ParseExpression(true);
          ExpectBlockEnd();
          continue;
        }
        ExpectBlockEnd();
        if (end == "else") {
          ParseBody(&n->else_body, {"endif"}, "if", offset);
          ExpectBlockEnd();
        }
        break;
      }
    } else if (name == "for") {
      n->kind = NodeKind::kFor;
      n->targets = ParseTargets();
      if (!IsName("in")) Error(Cur().offset, "expected 'in', found " + Describe(Cur()));
      Advance();
      n->expr = ParseTuple(false);
      if (IsName("if")) {
        Advance();
        n->filter = ParseExpression(true);
      }
      if (IsName("recursive")) Error(Cur().offset, "recursive for loops are not supported");
      ExpectBlockEnd();
      ++loop_depth_;
      const std::string end = ParseBody(&n->body, {"else", "endfor"}, "for", offset);
      --loop_depth_;
      ExpectBlockEnd();
      if (end == "else") {
        ParseBody(&n->else_body, {"endfor"}, "for", offset);
        ExpectBlockEnd();
      }
    } else if (name == "set") {
      const std::string first = ExpectName();
      if (IsOp(".")) {  // {% set ns.attr = value %}
        Advance();
        n->kind = NodeKind::kSet;
        n->targets = {first};
        n->text = ExpectName();
        ExpectOp("=");
        n->expr = ParseTuple(true);
        ExpectBlockEnd();
      } else {
        n->targets = {first};
        while (IsOp(",")) {
          Advance();
          n->targets.push_back(ExpectName());
        }
        if (IsOp("=")) {
          Advance();
          n->kind = NodeKind::kSet;
          n->expr = ParseTuple(true);
          ExpectBlockEnd();
        } else {
          if (n->targets.size() != 1) Error(Cur().offset, "expected '=' after the set targets");
          if (IsOp("|")) Error(Cur().offset, "filters on a block set are not supported");
          n->kind = NodeKind::kSetBlock;
          ExpectBlockEnd();
          ParseBody(&n->body, {"endset"}, "set", offset);
          ExpectBlockEnd();
        }
      }
    } else if (name == "macro") {
      n->kind = NodeKind::kMacro;
      n->text = ExpectName();
      ExpectOp("(");
      while (!IsOp(")")) {
        std::string param = ExpectName();
        ExprPtr fallback;
        if (IsOp("=")) {
          Advance();
          fallback = ParseExpression(true);
        }
        n->params.emplace_back(std::move(param), std::move(fallback));
        if (!IsOp(",")) break;
        Advance();
      }
      ExpectOp(")");
      ExpectBlockEnd();
      const int saved = loop_depth_;
      loop_depth_ = 0;
      ParseBody(&n->body, {"endmacro"}, "macro", offset);
      loop_depth_ = saved;
      ExpectBlockEnd();
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) Error(offset, fmt::format("'{}' outside a for loop", name));
      n->kind = name == "break" ? NodeKind::kBreak : NodeKind::kContinue;
      ExpectBlockEnd();
    } else if (name == "filter") {
      n->kind = NodeKind::kFilterBlock;
      n->expr = ParseFilter(nullptr);
      while (IsOp("|")) n->expr = ParseFilter(std::move(n->expr));
      ExpectBlockEnd();
      ParseBody(&n->body, {"endfilter"}, "filter", offset);
      ExpectBlockEnd();
    } else if (name == "generation") {
      n->kind = NodeKind::kGeneration;
      ExpectBlockEnd();
      ParseBody(&n->body, {"endgeneration"}, "generation", offset);
      ExpectBlockEnd();
    } else if (name == "include" || name == "import" || name == "from" || name == "extends" ||
               name == "block" || name == "call" || name == "with" || name == "do" ||
               name == "autoescape" || name == "trans") {
      Error(offset, fmt::format("tag '{}' is not supported by this template interpreter", name));
    } else if (name.rfind("end", 0) == 0 || name == "else" || name == "elif") {
      Error(offset, fmt::format("unexpected '{}' (no open block it could close)", name));
    } else {
      Error(offset, fmt::format("unknown tag '{}'", name));
    }
    return n;
  }

  // "a" or "a, b" or "(a, b)".
  std::vector<std::string> ParseTargets() {
    const bool paren = IsOp("(");
    if (paren) Advance();
    std::vector<std::string> names = {ExpectName()};
    while (IsOp(",")) {
      Advance();
      names.push_back(ExpectName());
    }
    if (paren) ExpectOp(")");
    return names;
  }

  // An expression, or several separated by commas (a tuple).
  ExprPtr ParseTuple(bool with_condexpr) {
    const size_t offset = Cur().offset;
    ExprPtr first = ParseExpression(with_condexpr);
    if (!IsOp(",")) return first;
    ExprPtr list = Make(ExprKind::kTuple, offset);
    list->args.push_back(std::move(first));
    while (IsOp(",")) {
      Advance();
      if (Cur().type == Tok::kBlockEnd || Cur().type == Tok::kVarEnd || IsName("if")) break;
      list->args.push_back(ParseExpression(with_condexpr));
    }
    return list;
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    DepthGuard guard(this, Cur().offset);
    if (!with_condexpr) return ParseOr();
    ExprPtr e = ParseOr();
    while (IsName("if")) {
      const size_t offset = Cur().offset;
      Advance();
      ExprPtr cond = Make(ExprKind::kCondExpr, offset);
      cond->args.push_back(std::move(e));
      cond->args.push_back(ParseOr());
      if (IsName("else")) {
        Advance();
        cond->args.push_back(ParseExpression(true));
      } else {
        cond->args.push_back(nullptr);
      }
      e = std::move(cond);
    }
    return e;
  }

  ExprPtr Binary(ExprKind kind, const std::string& op, ExprPtr left, ExprPtr right, size_t offset) {
    ExprPtr e = Make(kind, offset);
    e->name = op;
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr ParseOr() {
    ExprPtr left = ParseAnd();
    while (IsName("or")) {
      const size_t offset = Cur().offset;
      Advance();
      left = Binary(ExprKind::kOr, "or", std::move(left), ParseAnd(), offset);
    }
    return left;
  }

  ExprPtr ParseAnd() {
    ExprPtr left = ParseNot();
    while (IsName("and")) {
      const size_t offset = Cur().offset;
      Advance();
      left = Binary(ExprKind::kAnd, "and", std::move(left), ParseNot(), offset);
    }
    return left;
  }

  ExprPtr ParseNot() {
    if (IsName("not")) {
      DepthGuard guard(this, Cur().offset);
      ExprPtr e = Make(ExprKind::kNot, Cur().offset);
      Advance();
      e->args.push_back(ParseNot());
      return e;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    const size_t offset = Cur().offset;
    ExprPtr first = ParseMath1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Cur().type == Tok::kOp &&
          (Cur().text == "==" || Cur().text == "!=" || Cur().text == "<" || Cur().text == ">" ||
           Cur().text == "<=" || Cur().text == ">=")) {
        op = Cur().text;
        Advance();
      } else if (IsName("in")) {
        op = "in";
        Advance();
      } else if (IsName("not") && Peek().type == Tok::kName && Peek().text == "in") {
        op = "notin";
        Advance();
        Advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = Make(ExprKind::kCompare, offset);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(ParseMath1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr ParseMath1() {
    ExprPtr left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const std::string op = Cur().text;
      const size_t offset = Cur().offset;
      Advance();
      left = Binary(ExprKind::kBinary, op, std::move(left), ParseConcat(), offset);
    }
    return left;
  }

  ExprPtr ParseConcat() {
    ExprPtr left = ParseMath2();
    while (IsOp("~")) {
      const size_t offset = Cur().offset;
      Advance();
      left = Binary(ExprKind::kBinary, "~", std::move(left), ParseMath2(), offset);
    }
    return left;
  }

  ExprPtr ParseMath2() {
    ExprPtr left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string op = Cur().text;
      const size_t offset = Cur().offset;
      Advance();
      left = Binary(ExprKind::kBinary, op, std::move(left), ParsePow(), offset);
    }
    return left;
  }

  ExprPtr ParsePow() {
    ExprPtr left = ParseUnary(true);
    while (IsOp("**")) {
      const size_t offset = Cur().offset;
      Advance();
      left = Binary(ExprKind::kBinary, "**", std::move(left), ParseUnary(true), offset);
    }
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(this, Cur().offset);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      node = Make(IsOp("-") ? ExprKind::kNeg : ExprKind::kPos, Cur().offset);
      Advance();
      node->args.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    ExprPtr e = Make(ExprKind::kLiteral, t.offset);
    switch (t.type) {
      case Tok::kName:
        if (t.text == "true" || t.text == "True") {
          e->value = Value::Bool(true);
        } else if (t.text == "false" || t.text == "False") {
          e->value = Value::Bool(false);
        } else if (t.text == "none" || t.text == "None") {
          e->value = Value::None();
        } else {
          e->kind = ExprKind::kName;
          e->name = t.text;
        }
        Advance();
        return e;
      case Tok::kString: {
        std::string s;
        while (Cur().type == Tok::kString) {  // adjacent strings concatenate
          s += Cur().text;
          Advance();
        }
        e->value = Value::String(std::move(s));
        return e;
      }
      case Tok::kInt:
        e->value = Value::Int(t.int_value);
        Advance();
        return e;
      case Tok::kFloat:
        e->value = Value::Float(t.float_value);
        Advance();
        return e;
      case Tok::kOp:
        if (t.text == "(") {
          Advance();
          if (IsOp(")")) {  // empty tuple
            Advance();
            e->kind = ExprKind::kTuple;
            return e;
          }
          ExprPtr inner = ParseTuple(true);
          ExpectOp(")");
          return inner;
        }
        if (t.text == "[") {
          e->kind = ExprKind::kList;
          Advance();
          while (!IsOp("]")) {
            e->args.push_back(ParseExpression(true));
            if (!IsOp(",")) break;
            Advance();
          }
          ExpectOp("]");
          return e;
        }
        if (t.text == "{") {
          e->kind = ExprKind::kDict;
          Advance();
          while (!IsOp("}")) {
            e->args.push_back(ParseExpression(true));
            ExpectOp(":");
            e->args.push_back(ParseExpression(true));
            if (!IsOp(",")) break;
            Advance();
          }
          ExpectOp("}");
          return e;
        }
        break;
      default:
        break;
    }
    Error(t.offset, "unexpected " + Describe(t) + " in an expression");
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".")) {
        const size_t offset = Cur().offset;
        Advance();
        if (Cur().type == Tok::kInt) {  // x.0 is x[0]
          ExprPtr index = Make(ExprKind::kLiteral, Cur().offset);
          index->value = Value::Int(Cur().int_value);
          Advance();
          ExprPtr e = Make(ExprKind::kGetItem, offset);
          e->args.push_back(std::move(node));
          e->args.push_back(std::move(index));
          node = std::move(e);
        } else {
          ExprPtr e = Make(ExprKind::kGetAttr, offset);
          e->name = ExpectName();
          e->args.push_back(std::move(node));
          node = std::move(e);
        }
      } else if (IsOp("[")) {
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    const size_t offset = Cur().offset;
    Advance();
    ExprPtr start = IsOp(":") ? nullptr : ParseExpression(true);
    if (!IsOp(":")) {
      ExpectOp("]");
      ExprPtr e = Make(ExprKind::kGetItem, offset);
      e->args.push_back(std::move(node));
      e->args.push_back(std::move(start));
      return e;
    }
    Advance();
    ExprPtr stop = IsOp("]") || IsOp(":") ? nullptr : ParseExpression(true);
    ExprPtr step;
    if (IsOp(":")) {
      Advance();
      if (!IsOp("]")) step = ParseExpression(true);
    }
    ExpectOp("]");
    ExprPtr e = Make(ExprKind::kSlice, offset);
    e->args.push_back(std::move(node));
    e->args.push_back(std::move(start));
    e->args.push_back(std::move(stop));
    e->args.push_back(std::move(step));
    return e;
  }

  // Call arguments "(a, b, key=c)" into e->args (after what is already there) and e->kwargs.
  void ParseArgs(Expr* e) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (IsOp("*") || IsOp("**")) Error(Cur().offset, "*args and **kwargs are not supported");
      if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().text == "=") {
        std::string key = Cur().text;
        Advance();
        Advance();
        e->kwargs.emplace_back(std::move(key), ParseExpression(true));
      } else {
        if (!e->kwargs.empty()) {
          Error(Cur().offset, "positional argument after a keyword argument");
        }
        e->args.push_back(ParseExpression(true));
      }
      if (!IsOp(",")) break;
      Advance();
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr callee) {
    ExprPtr e = Make(ExprKind::kCall, callee->offset);
    e->args.push_back(std::move(callee));
    ParseArgs(e.get());
    return e;
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        node = ParseFilter(std::move(node));
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  // "| name(args)"; with input == nullptr (a filter block) there is no leading "|".
  ExprPtr ParseFilter(ExprPtr input) {
    if (input) ExpectOp("|");
    ExprPtr e = Make(ExprKind::kFilter, Cur().offset);
    e->name = ExpectName();
    e->args.push_back(std::move(input));
    if (IsOp("(")) ParseArgs(e.get());
    return e;
  }

  ExprPtr ParseTest(ExprPtr input) {
    ExprPtr e = Make(ExprKind::kTest, Cur().offset);
    Advance();  // is
    if (IsName("not")) {
      e->negated = true;
      Advance();
    }
    e->name = ExpectName();
    e->args.push_back(std::move(input));
    if (IsOp("(")) {
      ParseArgs(e.get());
    } else if ((Cur().type == Tok::kName || Cur().type == Tok::kString || Cur().type == Tok::kInt ||
                Cur().type == Tok::kFloat || IsOp("[") || IsOp("{")) &&
               !(IsName("else") || IsName("or") || IsName("and") || IsName("if") || IsName("in") ||
                 IsName("not") || IsName("is"))) {
      // A single argument without parentheses: "is divisibleby 3", "is sameas none".
      e->args.push_back(ParsePostfix(ParsePrimary()));
    }
    return e;
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  const std::string& src_;
  const std::string& what_;
  const int max_depth_;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

std::string Position(std::string_view source, size_t offset) {
  offset = std::min(offset, source.size());
  const size_t line_start = offset == 0 ? 0 : source.rfind('\n', offset - 1);
  const size_t begin = line_start == std::string_view::npos || offset == 0 ? 0 : line_start + 1;
  const size_t line =
      static_cast<size_t>(std::count(source.begin(), source.begin() + offset, '\n'));
  return fmt::format("line {}, column {}", line + 1,
                     CountCodePoints(source.substr(begin, offset - begin)) + 1);
}

std::unique_ptr<Body> Parse(const std::string& source, const std::string& what,
                            const Options& options) {
  std::vector<Token> tokens = Lexer(source, what, options).Run();
  return Parser(std::move(tokens), source, what, options).ParseTemplate();
}

}  // namespace dsv3::jinja
