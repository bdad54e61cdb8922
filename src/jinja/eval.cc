// The evaluator of the Jinja subset: scopes as Jinja2 has them (a for loop is a scope, an if is
// not; namespace() objects carry state out of loops), statements, expressions with Python
// semantics, and the globals, filters, tests and string/dict methods chat templates use.
// Limits on output size, nesting depth and steps keep a runaway template from hanging or
// exhausting memory.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "core/unicode.h"
#include "jinja/ast.h"

namespace dsv3::jinja {

enum class Flow { kNormal, kBreak, kContinue };

class Interpreter {
 public:
  Interpreter(const std::string& source, const std::string& what, const Options& options,
              std::string* out)
      : source_(source), what_(what), options_(options), out_(out) {
    scopes_.resize(2);  // [0] builtins, [1] the caller's variables and top-level sets
    InstallBuiltins();
  }

  void SetGlobal(const std::string& name, Value v) { scopes_[1][name] = std::move(v); }
  Flow Exec(const Body& body);
  Value Eval(const Expr& e);

  [[noreturn]] void Error(size_t offset, const std::string& message) const {
    Fail("{}: {}: {}", what_, Position(source_, offset), message);
  }
  // Counts one unit of work (an iteration, a call, an emitted piece) against max_steps.
  void Step(size_t offset) {
    if (++steps_ > options_.max_steps) {
      Error(offset,
            fmt::format("template ran more than {} steps (runaway loop?)", options_.max_steps));
    }
  }
  // Fails if a string of `bytes` would exceed the output limit.
  void CheckSize(size_t bytes, size_t offset) const {
    if (bytes > options_.max_output_bytes) {
      Error(offset, fmt::format("output or string larger than the limit of {} bytes",
                                options_.max_output_bytes));
    }
  }
  [[noreturn]] void UndefinedError(const Value& v, size_t offset) const {
    Error(offset, fmt::format("'{}' is undefined", v.AsString()));
  }

  Value CallMacro(const Node& macro, CallArgs& args, size_t offset);
  Value GetAttr(const Value& obj, const std::string& name, size_t offset);
  Value GetItem(const Value& obj, const Value& key, size_t offset);
  bool HasMethod(const Value& obj, const std::string& name) const;
  Value CallMethod(const Value& obj, const std::string& name, CallArgs& args, size_t offset);
  Value ApplyFilter(const std::string& name, const Value& input, CallArgs& args, size_t offset);
  bool ApplyTest(const std::string& name, const Value& input, CallArgs& args, size_t offset);
  // The items a for loop, filter or join sees: list items, dict keys, string characters.
  List Iterate(const Value& v, size_t offset) const;
  // a op b for the binary operators (+ - * / // % ** ~), as the sum filter adds too.
  Value EvalBinary(const std::string& op, const Value& a, const Value& b, size_t offset);
  // `item in container`, for the operator and the `in` test.
  bool Contains(const Value& container, const Value& item, size_t offset) const;

 private:
  struct DepthGuard {
    Interpreter* in;
    DepthGuard(Interpreter* interpreter, size_t offset) : in(interpreter) {
      if (++in->depth_ > in->options_.max_depth) {
        in->Error(offset, fmt::format("nesting deeper than {} levels (runaway recursion?)",
                                      in->options_.max_depth));
      }
    }
    ~DepthGuard() { --in->depth_; }
  };

  using Scope = std::unordered_map<std::string, Value>;

  void InstallBuiltins();
  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    return Value::Undefined(name);
  }
  void Assign(const std::string& name, Value v) { scopes_.back()[name] = std::move(v); }
  void Emit(std::string_view s, size_t offset) {
    Step(offset);
    CheckSize(out_->size() + s.size(), offset);
    out_->append(s);
  }
  // Runs `body` with output going to a fresh string, which is returned.
  std::string Capture(const Body& body, size_t offset);
  void ExecFor(const Node& n);
  void ExecSet(const Node& n);
  void Unpack(const std::vector<std::string>& targets, const Value& v, size_t offset);
  CallArgs EvalArgs(const Expr& e, size_t first);
  Value EvalCompare(const Expr& e);
  Value Slice(const Value& obj, const Expr& e);

  const std::string& source_;
  const std::string& what_;
  const Options& options_;
  std::string* out_;
  std::vector<Scope> scopes_;
  const Value* filter_block_input_ = nullptr;
  int depth_ = 0;
  int64_t steps_ = 0;
};

namespace {

// ---- string helpers (UTF-8, code point based like Python's str) ----

bool IsPySpace(uint32_t cp) { return IsUnicodeWhiteSpace(cp) || (cp >= 0x1C && cp <= 0x1F); }

std::vector<std::string_view> Chars(std::string_view s) {
  std::vector<std::string_view> chars;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    NextCodePoint(s, &pos);
    chars.push_back(s.substr(start, pos - start));
  }
  return chars;
}

// ASCII case mapping (other letters are left as they are).
std::string Upper(std::string s) {
  for (char& c : s) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  }
  return s;
}
std::string Lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  }
  return s;
}
std::string Capitalize(const std::string& s) {
  if (s.empty()) return s;
  std::string first = s.substr(0, 1);
  return Upper(first) + Lower(s.substr(1));
}

// Python str.strip(chars) / lstrip / rstrip; chars == nullptr strips whitespace.
std::string Strip(const std::string& s, const std::string* chars, bool left, bool right) {
  const std::vector<std::string_view> cs = Chars(s);
  std::vector<std::string_view> set;
  if (chars) set = Chars(*chars);
  auto strip = [&](std::string_view c) {
    if (!chars) {
      size_t p = 0;
      return IsPySpace(NextCodePoint(c, &p));
    }
    return std::find(set.begin(), set.end(), c) != set.end();
  };
  size_t b = 0, e = cs.size();
  if (left) {
    while (b < e && strip(cs[b])) ++b;
  }
  if (right) {
    while (e > b && strip(cs[e - 1])) --e;
  }
  std::string out;
  for (size_t i = b; i < e; ++i) out.append(cs[i]);
  return out;
}

// Python str.split / rsplit.
List Split(const std::string& s, const std::string* sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep) {
    if (!from_right) {
      size_t start = 0;
      while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        const size_t at = s.find(*sep, start);
        if (at == std::string::npos) break;
        parts.push_back(s.substr(start, at - start));
        start = at + sep->size();
      }
      parts.push_back(s.substr(start));
    } else {
      size_t end = s.size();
      std::vector<std::string> rev;
      while (maxsplit < 0 || static_cast<int64_t>(rev.size()) < maxsplit) {
        if (end < sep->size()) break;
        const size_t at = s.rfind(*sep, end - sep->size());
        if (at == std::string::npos) break;
        rev.push_back(s.substr(at + sep->size(), end - at - sep->size()));
        end = at;
      }
      rev.push_back(s.substr(0, end));
      parts.assign(rev.rbegin(), rev.rend());
    }
  } else {
    // Runs of whitespace separate; no empty parts; after maxsplit splits the rest is one part.
    const std::vector<std::string_view> cs = Chars(s);
    auto space = [&](size_t i) {
      size_t p = 0;
      return IsPySpace(NextCodePoint(cs[i], &p));
    };
    std::vector<std::pair<size_t, size_t>> words;  // [begin, end) in chars
    if (!from_right) {
      size_t i = 0;
      while (true) {
        while (i < cs.size() && space(i)) ++i;
        if (i >= cs.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          size_t e = cs.size();
          while (e > i && space(e - 1)) --e;
          words.emplace_back(i, e);
          break;
        }
        size_t j = i;
        while (j < cs.size() && !space(j)) ++j;
        words.emplace_back(i, j);
        i = j;
      }
    } else {
      size_t i = cs.size();
      while (true) {
        while (i > 0 && space(i - 1)) --i;
        if (i == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          size_t b = 0;
          while (b < i && space(b)) ++b;
          words.emplace_back(b, i);
          break;
        }
        size_t j = i;
        while (j > 0 && !space(j - 1)) --j;
        words.emplace_back(j, i);
        i = j;
      }
      std::reverse(words.begin(), words.end());
    }
    for (const auto& [b, e] : words) {
      std::string w;
      for (size_t k = b; k < e; ++k) w.append(cs[k]);
      parts.push_back(std::move(w));
    }
  }
  List out;
  for (std::string& p : parts) out.push_back(Value::String(std::move(p)));
  return out;
}

std::string ReplaceAll(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` before every character and at the end
    const std::vector<std::string_view> cs = Chars(s);
    int64_t done = 0;
    for (std::string_view c : cs) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      out.append(c);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(from, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += to;
    start = at + from.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// Python str.splitlines().
std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> lines;
  std::string cur;
  size_t i = 0;
  while (i < s.size()) {
    const size_t start = i;
    const uint32_t cp = NextCodePoint(s, &i);
    const bool brk = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C ||
                     cp == 0x1D || cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
    if (!brk) {
      cur.append(s, start, i - start);
      continue;
    }
    if (cp == '\r' && i < s.size() && s[i] == '\n') ++i;
    lines.push_back(std::move(cur));
    cur.clear();
  }
  if (!cur.empty()) lines.push_back(std::move(cur));
  return lines;
}

// Binds call arguments to parameter names: positional in order, then keywords by name.
class Params {
 public:
  Params(Interpreter& in, CallArgs& args, std::vector<const char*> names, const std::string& what,
         size_t offset)
      : values_(names.size()) {
    if (args.positional.size() > names.size()) {
      in.Error(offset, fmt::format("{} takes at most {} argument(s), got {}", what, names.size(),
                                   args.positional.size()));
    }
    for (size_t i = 0; i < args.positional.size(); ++i) values_[i] = &args.positional[i];
    for (auto& [key, value] : args.keyword) {
      size_t i = 0;
      while (i < names.size() && key != names[i]) ++i;
      if (i == names.size()) {
        in.Error(offset, fmt::format("{} got an unexpected keyword argument '{}'", what, key));
      }
      if (values_[i] != nullptr) {
        in.Error(offset, fmt::format("{} got multiple values for argument '{}'", what, key));
      }
      values_[i] = &value;
    }
  }
  bool Has(size_t i) const { return values_[i] != nullptr && !values_[i]->is_none(); }
  Value Or(size_t i, Value fallback) const { return values_[i] ? *values_[i] : fallback; }

 private:
  std::vector<const Value*> values_;
};

int64_t ToIndex(Interpreter& in, const Value& v, const char* what, size_t offset) {
  if (!v.is_integer()) {
    in.Error(offset, fmt::format("{} must be an integer, not {}", what, v.TypeName()));
  }
  return v.AsInt();
}

std::string ToStr(Interpreter& in, const Value& v, const char* what, size_t offset) {
  if (v.is_undefined()) in.UndefinedError(v, offset);
  if (!v.is_string()) {
    in.Error(offset, fmt::format("{} expects a string, not {}", what, v.TypeName()));
  }
  return v.AsString();
}

// Python slice indices for a sequence of length n.
std::vector<int64_t> SliceIndices(int64_t n, const Value* start, const Value* stop,
                                  const Value* step_v, Interpreter& in, size_t offset) {
  int64_t step = step_v && !step_v->is_none() ? ToIndex(in, *step_v, "slice step", offset) : 1;
  if (step == 0) in.Error(offset, "slice step cannot be zero");
  auto clamp = [&](const Value* v, int64_t fallback) {
    if (!v || v->is_none()) return fallback;
    int64_t i = ToIndex(in, *v, "slice index", offset);
    if (i < 0) i += n;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = clamp(start, step > 0 ? 0 : n - 1);
  const int64_t e = clamp(stop, step > 0 ? n : -1);
  std::vector<int64_t> out;
  for (int64_t i = b; step > 0 ? i < e : i > e; i += step) out.push_back(i);
  return out;
}

// Attribute path "a.b.0" of a value, as selectattr/map/sort take them.
Value AttrPath(Interpreter& in, const Value& v, const std::string& path, size_t offset) {
  Value cur = v;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit) && cur.is_list()) {
      cur = in.GetItem(cur, Value::Int(std::stoll(part)), offset);
    } else {
      cur = in.GetItem(cur, Value::String(part), offset);
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Statements

std::string Interpreter::Capture(const Body& body, size_t offset) {
  std::string captured;
  std::string* saved = out_;
  out_ = &captured;
  try {
    Exec(body);
  } catch (...) {
    out_ = saved;
    throw;
  }
  out_ = saved;
  return captured;
}

Flow Interpreter::Exec(const Body& body) {
  for (const NodePtr& node : body) {
    const Node& n = *node;
    switch (n.kind) {
      case NodeKind::kText:
        Emit(n.text, n.offset);
        break;
      case NodeKind::kOutput: {
        const Value v = Eval(*n.expr);
        Emit(v.Str(), n.offset);
        break;
      }
      case NodeKind::kIf: {
        DepthGuard guard(this, n.offset);
        bool taken = false;
        for (const auto& [cond, branch] : n.branches) {
          if (Eval(*cond).Truthy()) {
            taken = true;
            const Flow f = Exec(branch);
            if (f != Flow::kNormal) return f;
            break;
          }
        }
        if (!taken) {
          const Flow f = Exec(n.else_body);
          if (f != Flow::kNormal) return f;
        }
        break;
      }
      case NodeKind::kFor:
        ExecFor(n);
        break;
      case NodeKind::kSet:
        ExecSet(n);
        break;
      case NodeKind::kSetBlock:
        Assign(n.targets[0], Value::String(Capture(n.body, n.offset)));
        break;
      case NodeKind::kMacro: {
        const Node* macro = &n;
        Assign(n.text, Value::MakeFunction(Function{
                           n.text, [macro](Interpreter& in, CallArgs& args, size_t offset) {
                             return in.CallMacro(*macro, args, offset);
                           }}));
        break;
      }
      case NodeKind::kFilterBlock: {
        const Value input = Value::String(Capture(n.body, n.offset));
        const Value* saved = filter_block_input_;
        filter_block_input_ = &input;
        const Value v = Eval(*n.expr);
        filter_block_input_ = saved;
        Emit(v.Str(), n.offset);
        break;
      }
      case NodeKind::kGeneration: {
        const Flow f = Exec(n.body);
        if (f != Flow::kNormal) return f;
        break;
      }
      case NodeKind::kBreak:
        return Flow::kBreak;
      case NodeKind::kContinue:
        return Flow::kContinue;
    }
  }
  return Flow::kNormal;
}

void Interpreter::Unpack(const std::vector<std::string>& targets, const Value& v, size_t offset) {
  if (targets.size() == 1) {
    Assign(targets[0], v);
    return;
  }
  if (!v.is_list() || v.AsList().size() != targets.size()) {
    Error(offset, fmt::format("cannot unpack {} into {} names", v.Repr(), targets.size()));
  }
  for (size_t i = 0; i < targets.size(); ++i) Assign(targets[i], v.AsList()[i]);
}

void Interpreter::ExecFor(const Node& n) {
  DepthGuard guard(this, n.offset);
  const Value iterable = Eval(*n.expr);
  List items = Iterate(iterable, n.expr->offset);
  // Each iteration runs in a fresh scope: a plain `set` in the body lasts until the end of its
  // iteration (state that must survive goes through a namespace()).
  scopes_.emplace_back();
  if (n.filter) {  // "for x in xs if cond": filter first, so loop.length counts what is kept
    List kept;
    for (Value& item : items) {
      Step(n.offset);
      scopes_.back().clear();
      Unpack(n.targets, item, n.offset);
      if (Eval(*n.filter).Truthy()) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  const int64_t length = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < length; ++i) {
    Step(n.offset);
    scopes_.back().clear();
    Unpack(n.targets, items[i], n.offset);
    Dict loop;
    loop.Set("index", Value::Int(i + 1));
    loop.Set("index0", Value::Int(i));
    loop.Set("revindex", Value::Int(length - i));
    loop.Set("revindex0", Value::Int(length - i - 1));
    loop.Set("first", Value::Bool(i == 0));
    loop.Set("last", Value::Bool(i == length - 1));
    loop.Set("length", Value::Int(length));
    loop.Set("depth", Value::Int(1));
    loop.Set("depth0", Value::Int(0));
    loop.Set("previtem", i > 0 ? items[i - 1] : Value::Undefined("previtem"));
    loop.Set("nextitem", i + 1 < length ? items[i + 1] : Value::Undefined("nextitem"));
    loop.Set("cycle", Value::MakeFunction(Function{
                          "cycle", [i](Interpreter& in, CallArgs& args, size_t offset) {
                            if (args.positional.empty()) in.Error(offset, "cycle() needs values");
                            return args.positional[static_cast<size_t>(i) % args.positional.size()];
                          }}));
    Assign("loop", Value::MakeDict(std::move(loop)));
    if (Exec(n.body) == Flow::kBreak) break;
  }
  scopes_.pop_back();
  if (length == 0) Exec(n.else_body);
}

void Interpreter::ExecSet(const Node& n) {
  Value v = Eval(*n.expr);
  if (!n.text.empty()) {  // ns.attr = v
    const Value target = Lookup(n.targets[0]);
    if (!target.is_namespace()) {
      Error(n.offset, fmt::format("cannot set attribute '{}' of '{}': only namespace() objects "
                                  "can be changed",
                                  n.text, n.targets[0]));
    }
    target.MutableNamespace().Set(n.text, std::move(v));
    return;
  }
  Unpack(n.targets, v, n.offset);
}

Value Interpreter::CallMacro(const Node& m, CallArgs& args, size_t offset) {
  DepthGuard guard(this, offset);
  Step(offset);
  if (args.positional.size() > m.params.size()) {
    Error(offset, fmt::format("macro '{}' takes {} argument(s), got {}", m.text, m.params.size(),
                              args.positional.size()));
  }
  // The macro sees the globals and its own arguments, not the caller's loop variables.
  std::vector<Scope> saved(std::make_move_iterator(scopes_.begin() + 2),
                           std::make_move_iterator(scopes_.end()));
  scopes_.resize(2);
  scopes_.emplace_back();
  std::string result;
  try {
    std::vector<bool> bound(m.params.size(), false);
    for (size_t i = 0; i < args.positional.size(); ++i) {
      Assign(m.params[i].first, args.positional[i]);
      bound[i] = true;
    }
    for (auto& [key, value] : args.keyword) {
      size_t i = 0;
      while (i < m.params.size() && m.params[i].first != key) ++i;
      if (i == m.params.size() || bound[i]) {
        Error(offset,
              fmt::format("macro '{}' got an unexpected or repeated argument '{}'", m.text, key));
      }
      Assign(key, value);
      bound[i] = true;
    }
    for (size_t i = 0; i < m.params.size(); ++i) {
      if (bound[i]) continue;
      Assign(m.params[i].first,
             m.params[i].second ? Eval(*m.params[i].second) : Value::Undefined(m.params[i].first));
    }
    result = Capture(m.body, offset);
  } catch (...) {
    scopes_.resize(2);
    for (Scope& s : saved) scopes_.push_back(std::move(s));
    throw;
  }
  scopes_.resize(2);
  for (Scope& s : saved) scopes_.push_back(std::move(s));
  return Value::String(std::move(result));
}

// ---------------------------------------------------------------------------------------------
// Expressions

CallArgs Interpreter::EvalArgs(const Expr& e, size_t first) {
  CallArgs args;
  for (size_t i = first; i < e.args.size(); ++i) args.positional.push_back(Eval(*e.args[i]));
  for (const auto& [key, value] : e.kwargs) args.keyword.emplace_back(key, Eval(*value));
  return args;
}

Value Interpreter::Eval(const Expr& e) {
  DepthGuard guard(this, e.offset);
  switch (e.kind) {
    case ExprKind::kLiteral:
      return e.value;
    case ExprKind::kName:
      return Lookup(e.name);
    case ExprKind::kList:
    case ExprKind::kTuple: {
      List items;
      for (const ExprPtr& a : e.args) items.push_back(Eval(*a));
      return e.kind == ExprKind::kTuple ? Value::MakeTuple(std::move(items))
                                        : Value::MakeList(std::move(items));
    }
    case ExprKind::kDict: {
      Dict d;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        const Value key = Eval(*e.args[i]);
        if (!key.is_string()) {
          Error(e.args[i]->offset, "dict keys must be strings in this interpreter");
        }
        d.Set(key.AsString(), Eval(*e.args[i + 1]));
      }
      return Value::MakeDict(std::move(d));
    }
    case ExprKind::kGetAttr:
      return GetAttr(Eval(*e.args[0]), e.name, e.offset);
    case ExprKind::kGetItem:
      return GetItem(Eval(*e.args[0]), Eval(*e.args[1]), e.offset);
    case ExprKind::kSlice:
      return Slice(Eval(*e.args[0]), e);
    case ExprKind::kCall: {
      const Expr& callee = *e.args[0];
      if (callee.kind == ExprKind::kGetAttr) {  // obj.method(...)
        const Value obj = Eval(*callee.args[0]);
        if (HasMethod(obj, callee.name)) {
          CallArgs args = EvalArgs(e, 1);
          return CallMethod(obj, callee.name, args, e.offset);
        }
        const Value fn = GetAttr(obj, callee.name, callee.offset);
        if (fn.type() != Value::Type::kFunction) {
          Error(e.offset, fmt::format("{} has no method '{}'", obj.TypeName(), callee.name));
        }
        CallArgs args = EvalArgs(e, 1);
        Step(e.offset);
        return fn.AsFunction().call(*this, args, e.offset);
      }
      const Value fn = Eval(callee);
      if (fn.is_undefined()) {
        Error(e.offset, fmt::format("'{}' is undefined (not a known function)", fn.AsString()));
      }
      if (fn.type() != Value::Type::kFunction) {
        Error(e.offset, fmt::format("'{}' object is not callable", fn.TypeName()));
      }
      CallArgs args = EvalArgs(e, 1);
      Step(e.offset);
      return fn.AsFunction().call(*this, args, e.offset);
    }
    case ExprKind::kFilter: {
      const Value input = e.args[0] ? Eval(*e.args[0]) : *filter_block_input_;
      CallArgs args = EvalArgs(e, 1);
      return ApplyFilter(e.name, input, args, e.offset);
    }
    case ExprKind::kTest: {
      const Value input = Eval(*e.args[0]);
      CallArgs args = EvalArgs(e, 1);
      return Value::Bool(ApplyTest(e.name, input, args, e.offset) != e.negated);
    }
    case ExprKind::kNot:
      return Value::Bool(!Eval(*e.args[0]).Truthy());
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      const Value v = Eval(*e.args[0]);
      if (v.is_undefined()) UndefinedError(v, e.offset);
      if (!v.is_number()) {
        Error(e.offset, fmt::format("bad operand type for unary {}: '{}'",
                                    e.kind == ExprKind::kNeg ? "-" : "+", v.TypeName()));
      }
      if (e.kind == ExprKind::kPos) return v.is_integer() ? Value::Int(v.AsInt()) : v;
      if (v.is_integer()) {
        if (v.AsInt() == INT64_MIN) Error(e.offset, "integer overflow");
        return Value::Int(-v.AsInt());
      }
      return Value::Float(-v.AsDouble());
    }
    case ExprKind::kBinary:
      return EvalBinary(e.name, Eval(*e.args[0]), Eval(*e.args[1]), e.offset);
    case ExprKind::kAnd: {
      Value a = Eval(*e.args[0]);
      return a.Truthy() ? Eval(*e.args[1]) : a;
    }
    case ExprKind::kOr: {
      Value a = Eval(*e.args[0]);
      return a.Truthy() ? a : Eval(*e.args[1]);
    }
    case ExprKind::kCompare:
      return EvalCompare(e);
    case ExprKind::kCondExpr:
      if (Eval(*e.args[1]).Truthy()) return Eval(*e.args[0]);
      return e.args[2] ? Eval(*e.args[2]) : Value::Undefined("(conditional without else)");
  }
  Error(e.offset, "unknown expression");
}

Value Interpreter::EvalBinary(const std::string& op, const Value& a, const Value& b,
                              size_t offset) {
  if (op == "~") {
    std::string s = a.Str() + b.Str();
    CheckSize(s.size(), offset);
    return Value::String(std::move(s));
  }
  if (a.is_undefined()) UndefinedError(a, offset);
  if (b.is_undefined()) UndefinedError(b, offset);
  auto type_error = [&] {
    return fmt::format("unsupported operand types for {}: '{}' and '{}'", op, a.TypeName(),
                       b.TypeName());
  };
  if (a.is_number() && b.is_number()) {
    const bool ints = a.is_integer() && b.is_integer();
    const int64_t x = a.AsInt(), y = b.AsInt();
    const double fx = a.AsDouble(), fy = b.AsDouble();
    int64_t r = 0;
    if (op == "+") {
      if (!ints) return Value::Float(fx + fy);
      if (__builtin_add_overflow(x, y, &r)) Error(offset, "integer overflow");
      return Value::Int(r);
    }
    if (op == "-") {
      if (!ints) return Value::Float(fx - fy);
      if (__builtin_sub_overflow(x, y, &r)) Error(offset, "integer overflow");
      return Value::Int(r);
    }
    if (op == "*") {
      if (!ints) return Value::Float(fx * fy);
      if (__builtin_mul_overflow(x, y, &r)) Error(offset, "integer overflow");
      return Value::Int(r);
    }
    if (op == "/") {
      if (fy == 0) Error(offset, "division by zero");
      return Value::Float(fx / fy);
    }
    if (op == "//" || op == "%") {
      if (ints ? y == 0 : fy == 0)
        Error(offset, op == "//" ? "division by zero" : "modulo by zero");
      if (ints) {
        if (x == INT64_MIN && y == -1) Error(offset, "integer overflow");
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors toward negative infinity
          --q;
          m += y;
        }
        return Value::Int(op == "//" ? q : m);
      }
      const double q = std::floor(fx / fy);
      return Value::Float(op == "//" ? q : fx - q * fy);
    }
    if (op == "**") {
      if (ints && y >= 0) {
        int64_t result = 1, base = x;
        for (int64_t k = y; k > 0; k >>= 1) {
          if ((k & 1) && __builtin_mul_overflow(result, base, &result)) {
            Error(offset, "integer overflow");
          }
          if (k > 1 && __builtin_mul_overflow(base, base, &base)) Error(offset, "integer overflow");
        }
        return Value::Int(result);
      }
      return Value::Float(std::pow(fx, fy));
    }
    Error(offset, type_error());
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      CheckSize(a.AsString().size() + b.AsString().size(), offset);
      return Value::String(a.AsString() + b.AsString());
    }
    if (a.is_list() && b.is_list()) {
      List items = a.AsList();
      items.insert(items.end(), b.AsList().begin(), b.AsList().end());
      return Value::MakeList(std::move(items));
    }
    Error(offset, type_error());
  }
  if (op == "*") {
    const Value& seq = a.is_integer() ? b : a;
    const Value& count = a.is_integer() ? a : b;
    if (count.is_integer() && (seq.is_string() || seq.is_list())) {
      const int64_t n = std::max<int64_t>(count.AsInt(), 0);
      const size_t unit = seq.is_string() ? seq.AsString().size() : seq.AsList().size() * 16;
      if (unit > 0 && static_cast<uint64_t>(n) > options_.max_output_bytes / unit) {
        CheckSize(options_.max_output_bytes + 1, offset);
      }
      if (seq.is_string()) {
        std::string s;
        for (int64_t i = 0; i < n; ++i) s += seq.AsString();
        return Value::String(std::move(s));
      }
      List items;
      for (int64_t i = 0; i < n; ++i) {
        items.insert(items.end(), seq.AsList().begin(), seq.AsList().end());
      }
      return Value::MakeList(std::move(items));
    }
  }
  if (op == "%" && a.is_string())
    Error(offset, "printf-style '%' string formatting is not supported");
  Error(offset, type_error());
}

Value Interpreter::EvalCompare(const Expr& e) {
  Value left = Eval(*e.args[0]);
  for (size_t i = 0; i < e.ops.size(); ++i) {
    Value right = Eval(*e.args[i + 1]);
    const std::string& op = e.ops[i];
    bool r;
    if (op == "==") {
      r = Equal(left, right);
    } else if (op == "!=") {
      r = !Equal(left, right);
    } else if (op == "in" || op == "notin") {
      r = Contains(right, left, e.offset) == (op == "in");
    } else {
      if (left.is_undefined()) UndefinedError(left, e.offset);
      if (right.is_undefined()) UndefinedError(right, e.offset);
      bool ok = true;
      if (op == "<") {
        r = Less(left, right, &ok);
      } else if (op == ">") {
        r = Less(right, left, &ok);
      } else if (op == "<=") {
        r = !Less(right, left, &ok);
      } else {
        r = !Less(left, right, &ok);
      }
      if (!ok) {
        Error(e.offset, fmt::format("'{}' not supported between '{}' and '{}'", op, left.TypeName(),
                                    right.TypeName()));
      }
    }
    if (!r) return Value::Bool(false);
    left = std::move(right);
  }
  return Value::Bool(true);
}

bool Interpreter::Contains(const Value& container, const Value& item, size_t offset) const {
  if (container.is_undefined()) UndefinedError(container, offset);
  if (container.is_string()) {
    if (!item.is_string()) {
      Error(offset, fmt::format("'in <string>' requires a string, not {}", item.TypeName()));
    }
    return container.AsString().find(item.AsString()) != std::string::npos;
  }
  if (container.is_list()) {
    for (const Value& v : container.AsList()) {
      if (Equal(v, item)) return true;
    }
    return false;
  }
  if (container.is_dict()) return item.is_string() && container.AsDict().Find(item.AsString());
  Error(offset, fmt::format("argument of type '{}' is not a container", container.TypeName()));
}

List Interpreter::Iterate(const Value& v, size_t offset) const {
  switch (v.type()) {
    case Value::Type::kUndefined:
      return {};
    case Value::Type::kList:
      return v.AsList();
    case Value::Type::kDict: {
      List keys;
      for (const auto& [k, unused] : v.AsDict().items) keys.push_back(Value::String(k));
      return keys;
    }
    case Value::Type::kString: {
      List chars;
      for (std::string_view c : Chars(v.AsString())) chars.push_back(Value::String(std::string(c)));
      return chars;
    }
    default:
      Error(offset, fmt::format("'{}' object is not iterable", v.TypeName()));
  }
}

Value Interpreter::GetAttr(const Value& obj, const std::string& name, size_t offset) {
  if (obj.is_undefined()) UndefinedError(obj, offset);
  if (obj.is_dict()) {
    if (const Value* v = obj.AsDict().Find(name)) return *v;
  }
  if (HasMethod(obj, name)) {  // a bound method used as a value, e.g. passed to a filter
    const Value self = obj;
    return Value::MakeFunction(
        Function{name, [self, name](Interpreter& in, CallArgs& args, size_t at) {
                   return in.CallMethod(self, name, args, at);
                 }});
  }
  return Value::Undefined(name);
}

Value Interpreter::GetItem(const Value& obj, const Value& key, size_t offset) {
  if (obj.is_undefined()) UndefinedError(obj, offset);
  if (obj.is_dict()) {
    if (key.is_string()) {
      if (const Value* v = obj.AsDict().Find(key.AsString())) return *v;
      return Value::Undefined(key.AsString());
    }
    return Value::Undefined(key.Str());
  }
  if ((obj.is_list() || obj.is_string()) && key.is_integer()) {
    if (obj.is_list()) {
      const int64_t n = static_cast<int64_t>(obj.AsList().size());
      int64_t i = key.AsInt();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::Undefined(fmt::format("index {}", key.AsInt()));
      return obj.AsList()[static_cast<size_t>(i)];
    }
    const std::vector<std::string_view> cs = Chars(obj.AsString());
    const int64_t n = static_cast<int64_t>(cs.size());
    int64_t i = key.AsInt();
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::Undefined(fmt::format("index {}", key.AsInt()));
    return Value::String(std::string(cs[static_cast<size_t>(i)]));
  }
  if (key.is_string()) return GetAttr(obj, key.AsString(), offset);
  return Value::Undefined(key.Str());
}

Value Interpreter::Slice(const Value& obj, const Expr& e) {
  if (obj.is_undefined()) UndefinedError(obj, e.offset);
  Value parts[3];
  const Value* p[3] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < 3; ++k) {
    if (e.args[k + 1]) {
      parts[k] = Eval(*e.args[k + 1]);
      p[k] = &parts[k];
    }
  }
  if (obj.is_list()) {
    List out;
    const List& items = obj.AsList();
    for (int64_t i :
         SliceIndices(static_cast<int64_t>(items.size()), p[0], p[1], p[2], *this, e.offset)) {
      out.push_back(items[static_cast<size_t>(i)]);
    }
    return Value::MakeList(std::move(out));
  }
  if (obj.is_string()) {
    const std::vector<std::string_view> cs = Chars(obj.AsString());
    std::string out;
    for (int64_t i :
         SliceIndices(static_cast<int64_t>(cs.size()), p[0], p[1], p[2], *this, e.offset)) {
      out.append(cs[static_cast<size_t>(i)]);
    }
    return Value::String(std::move(out));
  }
  Error(e.offset, fmt::format("'{}' object cannot be sliced", obj.TypeName()));
}

// ---------------------------------------------------------------------------------------------
// Builtins: globals, methods, filters, tests

void Interpreter::InstallBuiltins() {
  Scope& g = scopes_[0];
  g["range"] = Value::MakeFunction(Function{
      "range", [](Interpreter& in, CallArgs& args, size_t offset) {
        if (!args.keyword.empty() || args.positional.empty() || args.positional.size() > 3) {
          in.Error(offset, "range() takes 1 to 3 integer arguments");
        }
        int64_t v[3] = {0, 0, 1};
        for (size_t i = 0; i < args.positional.size(); ++i) {
          v[i] = ToIndex(in, args.positional[i], "range() argument", offset);
        }
        if (args.positional.size() == 1) std::swap(v[0], v[1]);
        if (v[2] == 0) in.Error(offset, "range() step must not be zero");
        List items;
        for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) {
          if (items.size() >= 1000000) in.Error(offset, "range() of more than 1000000 items");
          items.push_back(Value::Int(i));
        }
        return Value::MakeList(std::move(items));
      }});
  auto make_dict = [](bool ns) {
    return [ns](Interpreter& in, CallArgs& args, size_t offset) {
      Dict d;
      for (const Value& p : args.positional) {  // namespace(a_dict) / dict(a_dict)
        if (!p.is_dict()) in.Error(offset, "expected keyword arguments or a dict");
        for (const auto& [k, v] : p.AsDict().items) d.Set(k, v);
      }
      for (auto& [k, v] : args.keyword) d.Set(k, v);
      return ns ? Value::MakeNamespace(std::move(d)) : Value::MakeDict(std::move(d));
    };
  };
  g["namespace"] = Value::MakeFunction(Function{"namespace", make_dict(true)});
  g["dict"] = Value::MakeFunction(Function{"dict", make_dict(false)});
  g["raise_exception"] = Value::MakeFunction(Function{
      "raise_exception", [](Interpreter& in, CallArgs& args, size_t offset) -> Value {
        const std::string message = args.positional.empty() ? "" : args.positional[0].Str();
        in.Error(offset, "the template raised an exception: " + message);
      }});
  g["strftime_now"] = Value::MakeFunction(
      Function{"strftime_now", [](Interpreter& in, CallArgs& args, size_t offset) {
                 if (args.positional.size() != 1 || !args.positional[0].is_string()) {
                   in.Error(offset, "strftime_now() takes one format string");
                 }
                 const std::time_t now = std::time(nullptr);
                 std::tm tm{};
                 localtime_r(&now, &tm);
                 char buf[512];
                 const size_t n =
                     std::strftime(buf, sizeof(buf), args.positional[0].AsString().c_str(), &tm);
                 return Value::String(std::string(buf, n));
               }});
}

bool Interpreter::HasMethod(const Value& obj, const std::string& name) const {
  static const char* kStr[] = {
      "upper",  "lower",      "title",      "capitalize", "strip",   "lstrip",  "rstrip", "split",
      "rsplit", "splitlines", "startswith", "endswith",   "replace", "find",    "rfind",  "count",
      "join",   "isdigit",    "isalpha",    "isalnum",    "isspace", "islower", "isupper"};
  static const char* kDict[] = {"items", "keys", "values", "get"};
  if (obj.is_string()) {
    return std::any_of(std::begin(kStr), std::end(kStr), [&](const char* m) { return name == m; });
  }
  if (obj.is_dict() && !obj.is_namespace()) {
    return std::any_of(std::begin(kDict), std::end(kDict),
                       [&](const char* m) { return name == m; });
  }
  return false;
}

Value Interpreter::CallMethod(const Value& obj, const std::string& name, CallArgs& args,
                              size_t offset) {
  Step(offset);
  const std::string what = fmt::format("{}.{}()", obj.TypeName(), name);
  if (obj.is_dict()) {
    const Dict& d = obj.AsDict();
    if (name == "get") {
      Params p(*this, args, {"key", "default"}, what, offset);
      const Value key = p.Or(0, Value::None());
      const Value* v = key.is_string() ? d.Find(key.AsString()) : nullptr;
      return v ? *v : p.Or(1, Value::None());
    }
    Params p(*this, args, {}, what, offset);
    List out;
    for (const auto& [k, v] : d.items) {
      if (name == "items") {
        out.push_back(Value::MakeTuple({Value::String(k), v}));
      } else {
        out.push_back(name == "keys" ? Value::String(k) : v);
      }
    }
    return Value::MakeList(std::move(out));
  }
  const std::string& s = obj.AsString();
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    Params p(*this, args, {}, what, offset);
    if (name == "upper") return Value::String(Upper(s));
    if (name == "lower") return Value::String(Lower(s));
    if (name == "capitalize") return Value::String(Capitalize(s));
    std::string out = s;  // title: a letter after a non-letter is upper, others lower
    bool prev_letter = false;
    for (char& c : out) {
      const bool letter = std::isalpha(static_cast<unsigned char>(c));
      if (letter)
        c = prev_letter ? static_cast<char>(std::tolower(c)) : static_cast<char>(std::toupper(c));
      prev_letter = letter;
    }
    return Value::String(out);
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Params p(*this, args, {"chars"}, what, offset);
    const Value chars = p.Or(0, Value::None());
    const std::string set_chars = chars.is_none() ? "" : ToStr(*this, chars, what.c_str(), offset);
    const std::string* set = chars.is_none() ? nullptr : &set_chars;
    return Value::String(Strip(s, set, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    Params p(*this, args, {"sep", "maxsplit"}, what, offset);
    const Value sep = p.Or(0, Value::None());
    const std::string sep_chars = sep.is_none() ? "" : ToStr(*this, sep, what.c_str(), offset);
    const std::string* sep_str = sep.is_none() ? nullptr : &sep_chars;
    if (sep_str && sep_str->empty()) Error(offset, what + ": empty separator");
    const int64_t maxsplit = ToIndex(*this, p.Or(1, Value::Int(-1)), "maxsplit", offset);
    return Value::MakeList(Split(s, sep_str, maxsplit, name == "rsplit"));
  }
  if (name == "splitlines") {
    Params p(*this, args, {}, what, offset);
    List out;
    for (std::string& line : SplitLines(s)) out.push_back(Value::String(std::move(line)));
    return Value::MakeList(std::move(out));
  }
  if (name == "startswith" || name == "endswith") {
    Params p(*this, args, {"prefix"}, what, offset);
    const Value arg = p.Or(0, Value::Undefined("prefix"));
    List options = arg.is_list() ? arg.AsList() : List{arg};
    for (const Value& o : options) {
      const std::string& x = ToStr(*this, o, what.c_str(), offset);
      if (name == "startswith"
              ? s.rfind(x, 0) == 0
              : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0) {
        return Value::Bool(true);
      }
    }
    return Value::Bool(false);
  }
  if (name == "replace") {
    Params p(*this, args, {"old", "new", "count"}, what, offset);
    const std::string& from = ToStr(*this, p.Or(0, Value::Undefined("old")), what.c_str(), offset);
    const std::string& to = ToStr(*this, p.Or(1, Value::Undefined("new")), what.c_str(), offset);
    std::string out =
        ReplaceAll(s, from, to, ToIndex(*this, p.Or(2, Value::Int(-1)), "count", offset));
    CheckSize(out.size(), offset);
    return Value::String(std::move(out));
  }
  if (name == "find" || name == "rfind" || name == "count") {
    Params p(*this, args, {"sub"}, what, offset);
    const std::string& sub = ToStr(*this, p.Or(0, Value::Undefined("sub")), what.c_str(), offset);
    if (name == "count") {
      if (sub.empty()) return Value::Int(static_cast<int64_t>(CountCodePoints(s) + 1));
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value::Int(n);
    }
    const size_t at = name == "find" ? s.find(sub) : s.rfind(sub);
    if (at == std::string::npos) return Value::Int(-1);
    return Value::Int(static_cast<int64_t>(CountCodePoints(std::string_view(s).substr(0, at))));
  }
  if (name == "join") {
    Params p(*this, args, {"iterable"}, what, offset);
    std::string out;
    bool first = true;
    for (const Value& v : Iterate(p.Or(0, Value::Undefined("iterable")), offset)) {
      if (!first) out += s;
      first = false;
      out += ToStr(*this, v, what.c_str(), offset);
      CheckSize(out.size(), offset);
    }
    return Value::String(std::move(out));
  }
  // isdigit, isalpha, isalnum, isspace, islower, isupper (ASCII letters and digits).
  Params p(*this, args, {}, what, offset);
  if (s.empty()) return Value::Bool(false);
  if (name == "isspace") {
    size_t pos = 0;
    while (pos < s.size()) {
      if (!IsPySpace(NextCodePoint(s, &pos))) return Value::Bool(false);
    }
    return Value::Bool(true);
  }
  bool cased = false, ok = true;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (name == "isdigit") ok = ok && std::isdigit(u);
    if (name == "isalpha") ok = ok && std::isalpha(u);
    if (name == "isalnum") ok = ok && std::isalnum(u);
    if (name == "islower") ok = ok && !std::isupper(u);
    if (name == "isupper") ok = ok && !std::islower(u);
    cased = cased || std::isalpha(u);
  }
  if (name == "islower" || name == "isupper") ok = ok && cased;
  return Value::Bool(ok);
}

namespace {

// A filter or test applied to `v` where the template calls it; `what` ("filter 'x'",
// "test 'x'") names it in error messages.
struct BuiltinCall {
  Interpreter& in;
  const std::string& name;
  const std::string& what;
  const Value& v;
  CallArgs& args;
  size_t offset;

  // Binds the arguments to these parameter names (an error for unknown or extra ones).
  Params Bind(std::vector<const char*> names) const {
    return Params(in, args, std::move(names), what, offset);
  }
  void RequireDefined() const {
    if (v.is_undefined()) in.UndefinedError(v, offset);
  }
  std::string Str(const Value& x) const { return ToStr(in, x, what.c_str(), offset); }
  [[noreturn]] void Error(const std::string& message) const { in.Error(offset, message); }
};

using TestFn = bool (*)(const BuiltinCall&);
using FilterFn = Value (*)(const BuiltinCall&);

// ---- tests ----

bool TestDefined(const BuiltinCall& c) { return !c.v.is_undefined(); }
bool TestUndefined(const BuiltinCall& c) { return c.v.is_undefined(); }
bool TestNone(const BuiltinCall& c) { return c.v.is_none(); }
bool TestBoolean(const BuiltinCall& c) { return c.v.type() == Value::Type::kBool; }
bool TestTrue(const BuiltinCall& c) { return c.v.type() == Value::Type::kBool && c.v.AsBool(); }
bool TestFalse(const BuiltinCall& c) { return c.v.type() == Value::Type::kBool && !c.v.AsBool(); }
bool TestInteger(const BuiltinCall& c) { return c.v.type() == Value::Type::kInt; }
bool TestFloat(const BuiltinCall& c) { return c.v.type() == Value::Type::kFloat; }
bool TestNumber(const BuiltinCall& c) { return c.v.is_number(); }
bool TestString(const BuiltinCall& c) { return c.v.is_string(); }
bool TestMapping(const BuiltinCall& c) { return c.v.is_dict(); }
// iterable and sequence.
bool TestIterable(const BuiltinCall& c) {
  return c.v.is_list() || c.v.is_dict() || c.v.is_string();
}
bool TestCallable(const BuiltinCall& c) { return c.v.type() == Value::Type::kFunction; }
bool TestLower(const BuiltinCall& c) {
  return c.v.is_string() && Lower(c.v.AsString()) == c.v.AsString();
}
bool TestUpper(const BuiltinCall& c) {
  return c.v.is_string() && Upper(c.v.AsString()) == c.v.AsString();
}

// The one argument of the tests that compare the input with something.
Value Other(const BuiltinCall& c) { return c.Bind({"other"}).Or(0, Value::Undefined("other")); }

// The input of even, odd and divisibleby, which must be an integer.
int64_t TestedInt(const BuiltinCall& c) {
  c.RequireDefined();
  return ToIndex(c.in, c.v, c.what.c_str(), c.offset);
}
bool TestEven(const BuiltinCall& c) { return TestedInt(c) % 2 == 0; }
bool TestOdd(const BuiltinCall& c) { return TestedInt(c) % 2 != 0; }
bool TestDivisibleBy(const BuiltinCall& c) {
  const int64_t x = TestedInt(c);
  const int64_t d = ToIndex(c.in, Other(c), c.what.c_str(), c.offset);
  if (d == 0) c.Error("divisibleby 0");
  return x % d == 0;
}

// eq, equalto, ==; ne, !=.
bool TestEqual(const BuiltinCall& c) { return Equal(c.v, Other(c)); }
bool TestNotEqual(const BuiltinCall& c) { return !Equal(c.v, Other(c)); }
bool TestSameAs(const BuiltinCall& c) {
  const Value o = Other(c);
  return c.v.type() == o.type() && (c.v.is_none() || c.v.is_undefined() || Equal(c.v, o));
}
bool TestIn(const BuiltinCall& c) { return c.in.Contains(Other(c), c.v, c.offset); }

// The ordering tests: `op` ("<", ">", "<=" or ">=") between the input and the argument.
bool TestOrder(const BuiltinCall& c, std::string_view op) {
  const Value o = Other(c);
  bool ok = true;
  const bool r = op == "<"    ? Less(c.v, o, &ok)
                 : op == ">"  ? Less(o, c.v, &ok)
                 : op == "<=" ? !Less(o, c.v, &ok)
                              : !Less(c.v, o, &ok);
  if (!ok) {
    c.Error(
        fmt::format("'{}' not supported between '{}' and '{}'", op, c.v.TypeName(), o.TypeName()));
  }
  return r;
}
bool TestLess(const BuiltinCall& c) { return TestOrder(c, "<"); }           // lt, lessthan, <
bool TestLessEqual(const BuiltinCall& c) { return TestOrder(c, "<="); }     // le, <=
bool TestGreater(const BuiltinCall& c) { return TestOrder(c, ">"); }        // gt, greaterthan, >
bool TestGreaterEqual(const BuiltinCall& c) { return TestOrder(c, ">="); }  // ge, >=

// ---- filters ----

// The item itself, or the value at `attribute` (a path "a.b.0") inside it when that is not None.
Value ItemOrAttr(const BuiltinCall& c, const Value& item, const Value& attribute) {
  return attribute.is_none() ? item : AttrPath(c.in, item, attribute.Str(), c.offset);
}

// The input as a string, for the filters that take no arguments and need a defined input.
std::string DefinedStr(const BuiltinCall& c) {
  c.Bind({});
  c.RequireDefined();
  return c.v.Str();
}

Value FilterDefault(const BuiltinCall& c) {  // default, d
  const Params p = c.Bind({"default_value", "boolean"});
  const bool boolean = p.Or(1, Value::Bool(false)).Truthy();
  if (c.v.is_undefined() || (boolean && !c.v.Truthy())) return p.Or(0, Value::String(""));
  return c.v;
}

Value FilterLength(const BuiltinCall& c) {  // length, count
  c.Bind({});
  const Value& v = c.v;
  if (v.is_undefined()) return Value::Int(0);
  if (v.is_string()) return Value::Int(static_cast<int64_t>(CountCodePoints(v.AsString())));
  if (v.is_list()) return Value::Int(static_cast<int64_t>(v.AsList().size()));
  if (v.is_dict()) return Value::Int(static_cast<int64_t>(v.AsDict().items.size()));
  c.Error(fmt::format("object of type '{}' has no length", v.TypeName()));
}

Value FilterString(const BuiltinCall& c) {
  c.Bind({});
  return Value::String(c.v.Str());
}

Value FilterSafe(const BuiltinCall& c) { return c.v; }
Value FilterUpper(const BuiltinCall& c) { return Value::String(Upper(DefinedStr(c))); }
Value FilterLower(const BuiltinCall& c) { return Value::String(Lower(DefinedStr(c))); }
Value FilterCapitalize(const BuiltinCall& c) { return Value::String(Capitalize(DefinedStr(c))); }
Value FilterEscape(const BuiltinCall& c) { return Value::String(HtmlEscape(DefinedStr(c))); }

// Words start after '-', whitespace, '(', '{', '[' or '<'.
Value FilterTitle(const BuiltinCall& c) {
  const std::string s = DefinedStr(c);
  std::string out;
  bool word_start = true;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const uint32_t cp = NextCodePoint(s, &pos);
    const bool sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || IsPySpace(cp);
    std::string ch = s.substr(start, pos - start);
    out += sep ? ch : (word_start ? Upper(ch) : Lower(ch));
    word_start = sep;
  }
  return Value::String(out);
}

Value FilterTrim(const BuiltinCall& c) {
  const Params p = c.Bind({"chars"});
  c.RequireDefined();
  const Value chars = p.Or(0, Value::None());
  const std::string set_chars = chars.is_none() ? "" : c.Str(chars);
  const std::string* set = chars.is_none() ? nullptr : &set_chars;
  return Value::String(Strip(c.v.Str(), set, true, true));
}

Value FilterReplace(const BuiltinCall& c) {
  const Params p = c.Bind({"old", "new", "count"});
  c.RequireDefined();
  const std::string from = c.Str(p.Or(0, Value::Undefined("old")));
  const std::string to = c.Str(p.Or(1, Value::Undefined("new")));
  const Value count = p.Or(2, Value::None());
  std::string out = ReplaceAll(c.v.Str(), from, to,
                               count.is_none() ? -1 : ToIndex(c.in, count, "count", c.offset));
  c.in.CheckSize(out.size(), c.offset);
  return Value::String(std::move(out));
}

// first and last (an undefined input passes through).
Value EndItem(const BuiltinCall& c, bool last) {
  c.Bind({});
  if (c.v.is_undefined()) return c.v;
  const List items = c.in.Iterate(c.v, c.offset);
  if (items.empty()) return Value::Undefined(c.name + " item of an empty sequence");
  return last ? items.back() : items.front();
}
Value FilterFirst(const BuiltinCall& c) { return EndItem(c, false); }
Value FilterLast(const BuiltinCall& c) { return EndItem(c, true); }

Value FilterJoin(const BuiltinCall& c) {
  const Params p = c.Bind({"d", "attribute"});
  const std::string sep = p.Or(0, Value::String("")).Str();
  const Value attribute = p.Or(1, Value::None());
  std::string out;
  bool first = true;
  for (const Value& item : c.in.Iterate(c.v, c.offset)) {
    if (!first) out += sep;
    first = false;
    out += ItemOrAttr(c, item, attribute).Str();
    c.in.CheckSize(out.size(), c.offset);
  }
  return Value::String(std::move(out));
}

Value FilterList(const BuiltinCall& c) {
  c.Bind({});
  c.RequireDefined();
  return Value::MakeList(c.in.Iterate(c.v, c.offset));
}

// The (key, value) tuples of a dict input.
List DictItems(const BuiltinCall& c) {
  if (!c.v.is_dict()) c.Error(fmt::format("{} expects a mapping, not {}", c.what, c.v.TypeName()));
  List out;
  for (const auto& [k, x] : c.v.AsDict().items)
    out.push_back(Value::MakeTuple({Value::String(k), x}));
  return out;
}

Value FilterItems(const BuiltinCall& c) {
  c.Bind({});
  if (c.v.is_undefined()) return Value::MakeList({});
  return Value::MakeList(DictItems(c));
}

Value FilterDictSort(const BuiltinCall& c) {
  const Params p = c.Bind({"case_sensitive", "by", "reverse"});
  c.RequireDefined();
  List out = DictItems(c);
  const bool case_sensitive = p.Or(0, Value::Bool(false)).Truthy();
  const size_t by = p.Or(1, Value::String("key")).Str() == "value" ? 1 : 0;
  const bool reverse = p.Or(2, Value::Bool(false)).Truthy();
  std::stable_sort(out.begin(), out.end(), [&](const Value& a, const Value& b) {
    Value x = a.AsList()[by], y = b.AsList()[by];
    if (!case_sensitive && x.is_string() && y.is_string()) {
      x = Value::String(Lower(x.AsString()));
      y = Value::String(Lower(y.AsString()));
    }
    bool ok;
    return reverse ? Less(y, x, &ok) : Less(x, y, &ok);
  });
  return Value::MakeList(std::move(out));
}

Value FilterReverse(const BuiltinCall& c) {
  c.Bind({});
  c.RequireDefined();
  if (c.v.is_string()) {
    const std::vector<std::string_view> cs = Chars(c.v.AsString());
    std::string out;
    for (auto it = cs.rbegin(); it != cs.rend(); ++it) out.append(*it);
    return Value::String(out);
  }
  List items = c.in.Iterate(c.v, c.offset);
  std::reverse(items.begin(), items.end());
  return Value::MakeList(std::move(items));
}

// How sort, unique, min and max compare items: by the item or its attribute, strings lowercased
// unless case_sensitive. Reads those two parameters at `first` and `first` + 1.
class Ordering {
 public:
  Ordering(const BuiltinCall& c, const Params& p, size_t first)
      : c_(c),
        case_sensitive_(p.Or(first, Value::Bool(false)).Truthy()),
        attribute_(p.Or(first + 1, Value::None())) {}

  Value Key(const Value& item) const {
    Value k = ItemOrAttr(c_, item, attribute_);
    if (!case_sensitive_ && k.is_string()) k = Value::String(Lower(k.AsString()));
    return k;
  }
  // Whether `a` orders before `b`; an error when their keys do not order.
  bool Before(const Value& a, const Value& b) const {
    bool ok = true;
    const bool r = Less(Key(a), Key(b), &ok);
    if (!ok) {
      c_.Error(fmt::format("{}: cannot order '{}' and '{}'", c_.what, a.TypeName(), b.TypeName()));
    }
    return r;
  }

 private:
  const BuiltinCall& c_;
  bool case_sensitive_;
  Value attribute_;
};

Value FilterSort(const BuiltinCall& c) {
  const Params p = c.Bind({"reverse", "case_sensitive", "attribute"});
  const bool reverse = p.Or(0, Value::Bool(false)).Truthy();
  const Ordering order(c, p, 1);
  c.RequireDefined();
  List items = c.in.Iterate(c.v, c.offset);
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    return reverse ? order.Before(b, a) : order.Before(a, b);
  });
  return Value::MakeList(std::move(items));
}

Value FilterUnique(const BuiltinCall& c) {
  const Params p = c.Bind({"case_sensitive", "attribute"});
  const Ordering order(c, p, 0);
  c.RequireDefined();
  List out;
  std::vector<Value> seen;
  for (const Value& item : c.in.Iterate(c.v, c.offset)) {
    const Value k = order.Key(item);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return Equal(s, k); })) {
      seen.push_back(k);
      out.push_back(item);
    }
  }
  return Value::MakeList(std::move(out));
}

// min and max: the first smallest or largest item.
Value Extreme(const BuiltinCall& c, bool largest) {
  const Params p = c.Bind({"case_sensitive", "attribute"});
  const Ordering order(c, p, 0);
  c.RequireDefined();
  const List items = c.in.Iterate(c.v, c.offset);
  if (items.empty()) return Value::Undefined(c.name + " of an empty sequence");
  Value best = items[0];
  for (const Value& item : items) {
    if (largest ? order.Before(best, item) : order.Before(item, best)) best = item;
  }
  return best;
}
Value FilterMin(const BuiltinCall& c) { return Extreme(c, false); }
Value FilterMax(const BuiltinCall& c) { return Extreme(c, true); }

Value FilterSum(const BuiltinCall& c) {
  const Params p = c.Bind({"attribute", "start"});
  const Value attribute = p.Or(0, Value::None());
  Value total = p.Or(1, Value::Int(0));
  for (const Value& item : c.in.Iterate(c.v, c.offset)) {
    total = c.in.EvalBinary("+", total, ItemOrAttr(c, item, attribute), c.offset);
  }
  return total;
}

// A string as the int and float filters read it, surrounding whitespace allowed: an int when
// `as_int` and it spells one, else a float; undefined when it is no number.
Value ParseNumber(const std::string& text, bool as_int) {
  const std::string s = Strip(text, nullptr, true, true);
  size_t used = 0;
  try {
    if (as_int && !s.empty() && s.find_first_of(".eEn") == std::string::npos) {
      const int64_t i = std::stoll(s, &used);
      if (used == s.size()) return Value::Int(i);
    }
    const double d = std::stod(s, &used);
    if (used == s.size() && !s.empty()) return Value::Float(d);
  } catch (const std::exception&) {  // no number, or out of range
  }
  return Value();
}

// int and float: the input as a number, or `default` when it is none (or, for int, too large).
Value ToNumber(const BuiltinCall& c, bool as_int) {
  const Params p = c.Bind({"default"});
  const Value fallback = p.Or(0, as_int ? Value::Int(0) : Value::Float(0));
  Value x;
  if (c.v.is_number()) {
    x = c.v;
  } else if (c.v.is_string()) {
    x = ParseNumber(c.v.AsString(), as_int);
  }
  if (!x.is_number()) return fallback;
  if (as_int && x.is_integer()) return Value::Int(x.AsInt());
  const double d = x.AsDouble();
  if (!as_int) return Value::Float(d);
  if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return fallback;
  return Value::Int(static_cast<int64_t>(d));
}
Value FilterInt(const BuiltinCall& c) { return ToNumber(c, true); }
Value FilterFloat(const BuiltinCall& c) { return ToNumber(c, false); }

Value FilterAbs(const BuiltinCall& c) {
  c.Bind({});
  c.RequireDefined();
  const Value& v = c.v;
  if (!v.is_number()) c.Error(fmt::format("bad operand type for abs(): '{}'", v.TypeName()));
  if (v.is_integer()) {
    if (v.AsInt() == INT64_MIN) c.Error("integer overflow");
    return Value::Int(std::abs(v.AsInt()));
  }
  return Value::Float(std::fabs(v.AsDouble()));
}

Value FilterRound(const BuiltinCall& c) {
  const Params p = c.Bind({"precision", "method"});
  c.RequireDefined();
  if (!c.v.is_number()) c.Error(fmt::format("{} expects a number, not {}", c.what, c.v.TypeName()));
  const int64_t precision = ToIndex(c.in, p.Or(0, Value::Int(0)), "precision", c.offset);
  const std::string method = p.Or(1, Value::String("common")).Str();
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = c.v.AsDouble() * scale;
  double r;
  if (method == "common") {
    r = std::nearbyint(x);  // Python's round(): halves to even
  } else if (method == "ceil") {
    r = std::ceil(x);
  } else if (method == "floor") {
    r = std::floor(x);
  } else {
    c.Error("round method must be 'common', 'ceil' or 'floor'");
  }
  return Value::Float(r / scale);
}

Value FilterToJson(const BuiltinCall& c) {
  const Params p = c.Bind({"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonDumpOptions o;
  o.ensure_ascii = p.Or(0, Value::Bool(false)).Truthy();
  const Value indent = p.Or(1, Value::None());
  if (!indent.is_none()) o.indent = static_cast<int>(ToIndex(c.in, indent, "indent", c.offset));
  const Value separators = p.Or(2, Value::None());
  if (!separators.is_none()) {
    if (!separators.is_list() || separators.AsList().size() != 2) {
      c.Error("tojson separators must be a pair of strings");
    }
    o.item_separator = separators.AsList()[0].Str();
    o.key_separator = separators.AsList()[1].Str();
  }
  o.sort_keys = p.Or(3, Value::Bool(false)).Truthy();
  std::string out;
  if (!DumpJson(c.v, o, &out)) {
    c.Error(fmt::format("{}: value of type '{}' (or inside it) is not JSON serializable", c.what,
                        c.v.TypeName()));
  }
  c.in.CheckSize(out.size(), c.offset);
  return Value::String(std::move(out));
}

Value FilterIndent(const BuiltinCall& c) {
  const Params p = c.Bind({"width", "first", "blank"});
  c.RequireDefined();
  const Value width = p.Or(0, Value::Int(4));
  const std::string pad =
      width.is_string()
          ? width.AsString()
          : std::string(
                static_cast<size_t>(std::max<int64_t>(ToIndex(c.in, width, "width", c.offset), 0)),
                ' ');
  const bool first = p.Or(1, Value::Bool(false)).Truthy();
  const bool blank = p.Or(2, Value::Bool(false)).Truthy();
  const std::vector<std::string> lines = SplitLines(c.v.Str() + "\n");
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += "\n";
    if (i > 0 && (blank || !lines[i].empty())) out += pad;
    out += lines[i];
  }
  if (first) out = pad + out;
  c.in.CheckSize(out.size(), c.offset);
  return Value::String(std::move(out));
}

Value FilterAttr(const BuiltinCall& c) {
  const Params p = c.Bind({"name"});
  return c.in.GetAttr(c.v, p.Or(0, Value::String("")).Str(), c.offset);
}

// map(attribute="x", default=...): each item's attribute.
Value MapAttribute(const BuiltinCall& c) {
  const Params p = c.Bind({"attribute", "default"});
  const std::string attribute = p.Or(0, Value::String("")).Str();
  List out;
  for (const Value& item : c.in.Iterate(c.v, c.offset)) {
    Value x = AttrPath(c.in, item, attribute, c.offset);
    out.push_back(x.is_undefined() && p.Has(1) ? p.Or(1, Value::None()) : x);
  }
  return Value::MakeList(std::move(out));
}

// map("filter", args...): the filter applied to each item.
Value FilterMap(const BuiltinCall& c) {
  if (c.args.positional.empty()) return MapAttribute(c);
  const std::string filter = c.Str(c.args.positional[0]);
  const CallArgs rest{std::vector<Value>(c.args.positional.begin() + 1, c.args.positional.end()),
                      c.args.keyword};
  List out;
  for (const Value& item : c.in.Iterate(c.v, c.offset)) {
    CallArgs a = rest;
    out.push_back(c.in.ApplyFilter(filter, item, a, c.offset));
  }
  return Value::MakeList(std::move(out));
}

// select, reject, selectattr and rejectattr: the items whose value (the item, or its attribute
// when `by_attr`) passes the test (or is truthy when none is named) keep_if times.
Value Select(const BuiltinCall& c, bool by_attr, bool keep_if) {
  const std::vector<Value>& positional = c.args.positional;
  size_t next = 0;
  std::string attribute;
  if (by_attr) {
    if (positional.empty()) c.Error(c.what + " needs an attribute name");
    attribute = positional[next++].Str();
  }
  std::string test;
  if (next < positional.size()) test = c.Str(positional[next++]);
  const CallArgs rest{
      std::vector<Value>(positional.begin() + static_cast<long>(next), positional.end()),
      c.args.keyword};
  List out;
  for (const Value& item : c.in.Iterate(c.v, c.offset)) {
    const Value x = by_attr ? AttrPath(c.in, item, attribute, c.offset) : item;
    CallArgs a = rest;
    const bool pass = test.empty() ? x.Truthy() : c.in.ApplyTest(test, x, a, c.offset);
    if (pass == keep_if) out.push_back(item);
  }
  return Value::MakeList(std::move(out));
}
Value FilterSelect(const BuiltinCall& c) { return Select(c, false, true); }
Value FilterReject(const BuiltinCall& c) { return Select(c, false, false); }
Value FilterSelectAttr(const BuiltinCall& c) { return Select(c, true, true); }
Value FilterRejectAttr(const BuiltinCall& c) { return Select(c, true, false); }

}  // namespace

bool Interpreter::ApplyTest(const std::string& name, const Value& v, CallArgs& args,
                            size_t offset) {
  static const std::unordered_map<std::string_view, TestFn> kTests = {
      {"defined", TestDefined},
      {"undefined", TestUndefined},
      {"none", TestNone},
      {"boolean", TestBoolean},
      {"true", TestTrue},
      {"false", TestFalse},
      {"integer", TestInteger},
      {"float", TestFloat},
      {"number", TestNumber},
      {"string", TestString},
      {"mapping", TestMapping},
      {"iterable", TestIterable},
      {"sequence", TestIterable},
      {"callable", TestCallable},
      {"lower", TestLower},
      {"upper", TestUpper},
      {"even", TestEven},
      {"odd", TestOdd},
      {"divisibleby", TestDivisibleBy},
      {"eq", TestEqual},
      {"equalto", TestEqual},
      {"==", TestEqual},
      {"ne", TestNotEqual},
      {"!=", TestNotEqual},
      {"sameas", TestSameAs},
      {"in", TestIn},
      {"lt", TestLess},
      {"lessthan", TestLess},
      {"<", TestLess},
      {"le", TestLessEqual},
      {"<=", TestLessEqual},
      {"gt", TestGreater},
      {"greaterthan", TestGreater},
      {">", TestGreater},
      {"ge", TestGreaterEqual},
      {">=", TestGreaterEqual},
  };
  const auto test = kTests.find(name);
  if (test == kTests.end()) Error(offset, fmt::format("unknown test '{}'", name));
  const std::string what = fmt::format("test '{}'", name);
  return test->second(BuiltinCall{*this, name, what, v, args, offset});
}

Value Interpreter::ApplyFilter(const std::string& name, const Value& v, CallArgs& args,
                               size_t offset) {
  static const std::unordered_map<std::string_view, FilterFn> kFilters = {
      {"default", FilterDefault},
      {"d", FilterDefault},
      {"length", FilterLength},
      {"count", FilterLength},
      {"string", FilterString},
      {"safe", FilterSafe},
      {"upper", FilterUpper},
      {"lower", FilterLower},
      {"capitalize", FilterCapitalize},
      {"escape", FilterEscape},
      {"e", FilterEscape},
      {"title", FilterTitle},
      {"trim", FilterTrim},
      {"replace", FilterReplace},
      {"first", FilterFirst},
      {"last", FilterLast},
      {"join", FilterJoin},
      {"list", FilterList},
      {"items", FilterItems},
      {"dictsort", FilterDictSort},
      {"reverse", FilterReverse},
      {"sort", FilterSort},
      {"unique", FilterUnique},
      {"min", FilterMin},
      {"max", FilterMax},
      {"sum", FilterSum},
      {"int", FilterInt},
      {"float", FilterFloat},
      {"abs", FilterAbs},
      {"round", FilterRound},
      {"tojson", FilterToJson},
      {"indent", FilterIndent},
      {"attr", FilterAttr},
      {"map", FilterMap},
      {"select", FilterSelect},
      {"reject", FilterReject},
      {"selectattr", FilterSelectAttr},
      {"rejectattr", FilterRejectAttr},
  };
  Step(offset);
  const auto filter = kFilters.find(name);
  if (filter == kFilters.end()) Error(offset, fmt::format("unknown filter '{}'", name));
  const std::string what = fmt::format("filter '{}'", name);
  return filter->second(BuiltinCall{*this, name, what, v, args, offset});
}

// ---------------------------------------------------------------------------------------------
// Template

namespace {

// Jinja2 reads templates with universal newlines and drops one trailing newline.
std::string NormalizeSource(std::string source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

Template::Template(std::string source, std::string what, Options options)
    : what_(std::move(what)), options_(options) {
  if (source.size() > options_.max_source_bytes) {
    Fail("{}: template is {} bytes, more than the limit of {} bytes", what_, source.size(),
         options_.max_source_bytes);
  }
  source_ = NormalizeSource(std::move(source));
  if (FindInvalidUtf8(source_) != std::string::npos) Fail("{}: template is not valid UTF-8", what_);
  body_ = Parse(source_, what_, options_);
}

Template::~Template() = default;

std::string Template::Render(const OrderedJson& variables) const {
  if (!variables.is_object()) Fail("{}: template variables must be a JSON object", what_);
  std::vector<std::pair<std::string, Value>> vars;
  for (auto it = variables.begin(); it != variables.end(); ++it) {
    vars.emplace_back(it.key(), Value::FromJson(it.value()));
  }
  return Render(vars);
}

std::string Template::Render(const std::vector<std::pair<std::string, Value>>& variables) const {
  std::string out;
  Interpreter in(source_, what_, options_, &out);
  for (const auto& [name, value] : variables) in.SetGlobal(name, value);
  in.Exec(*body_);
  return out;
}

}  // namespace dsv3::jinja
