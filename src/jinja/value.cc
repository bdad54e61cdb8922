#include "jinja/value.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/unicode.h"

namespace dsv3::jinja {

Value Value::MakeList(List items) {
  Value v(Type::kList);
  v.list_ = std::make_shared<const List>(std::move(items));
  return v;
}

Value Value::MakeTuple(List items) {
  Value v = MakeList(std::move(items));
  v.is_tuple_ = true;
  return v;
}

Value Value::MakeDict(Dict dict) {
  Value v(Type::kDict);
  v.dict_ = std::make_shared<Dict>(std::move(dict));
  return v;
}

Value Value::MakeNamespace(Dict dict) {
  Value v = MakeDict(std::move(dict));
  v.is_namespace_ = true;
  return v;
}

Value Value::MakeFunction(Function f) {
  Value v(Type::kFunction);
  v.function_ = std::make_shared<const Function>(std::move(f));
  return v;
}

Value Value::FromJson(const OrderedJson& j) {
  switch (j.type()) {
    case OrderedJson::value_t::null:
      return None();
    case OrderedJson::value_t::boolean:
      return Bool(j.get<bool>());
    case OrderedJson::value_t::number_integer:
      return Int(j.get<int64_t>());
    case OrderedJson::value_t::number_unsigned:
      if (j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return Float(static_cast<double>(j.get<uint64_t>()));
      }
      return Int(static_cast<int64_t>(j.get<uint64_t>()));
    case OrderedJson::value_t::number_float:
      return Float(j.get<double>());
    case OrderedJson::value_t::string:
      return String(j.get<std::string>());
    case OrderedJson::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const OrderedJson& e : j) items.push_back(FromJson(e));
      return MakeList(std::move(items));
    }
    case OrderedJson::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.Set(it.key(), FromJson(it.value()));
      return MakeDict(std::move(d));
    }
    default:
      return None();
  }
}

const Value* Dict::Find(std::string_view key) const {
  for (const auto& [k, v] : items) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Dict::Set(const std::string& key, Value value) {
  for (auto& [k, v] : items) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(key, std::move(value));
}

bool Value::Truthy() const {
  switch (type_) {
    case Type::kUndefined:
    case Type::kNone:
      return false;
    case Type::kBool:
    case Type::kInt:
      return int_ != 0;
    case Type::kFloat:
      return float_ != 0;
    case Type::kString:
      return !str_.empty();
    case Type::kList:
      return !list_->empty();
    case Type::kDict:
      return is_namespace_ || !dict_->items.empty();
    case Type::kFunction:
      return true;
  }
  return false;
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // fmt's shortest representation switches to exponent form at the same thresholds as Python
  // (exponent < -4 or >= 16); Python adds ".0" to integral values.
  std::string s = fmt::format("{}", d);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

namespace {

void AppendRepr(const Value& v, std::string* out);

void AppendStringRepr(const std::string& s, std::string* out) {
  // Python prefers single quotes, and uses double quotes when the text has ' but no ".
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  out->push_back(q);
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == q || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (c == '\n') {
      *out += "\\n";
    } else if (c == '\r') {
      *out += "\\r";
    } else if (c == '\t') {
      *out += "\\t";
    } else if (u < 0x20 || u == 0x7F) {
      *out += fmt::format("\\x{:02x}", u);
    } else {
      out->push_back(c);
    }
  }
  out->push_back(q);
}

void AppendRepr(const Value& v, std::string* out) {
  switch (v.type()) {
    case Value::Type::kString:
      AppendStringRepr(v.AsString(), out);
      return;
    case Value::Type::kList: {
      out->push_back(v.is_tuple() ? '(' : '[');
      bool first = true;
      for (const Value& e : v.AsList()) {
        if (!first) *out += ", ";
        first = false;
        AppendRepr(e, out);
      }
      if (v.is_tuple() && v.AsList().size() == 1) out->push_back(',');
      out->push_back(v.is_tuple() ? ')' : ']');
      return;
    }
    case Value::Type::kDict: {
      if (v.is_namespace()) *out += "<Namespace ";
      out->push_back('{');
      bool first = true;
      for (const auto& [k, e] : v.AsDict().items) {
        if (!first) *out += ", ";
        first = false;
        AppendStringRepr(k, out);
        *out += ": ";
        AppendRepr(e, out);
      }
      out->push_back('}');
      if (v.is_namespace()) out->push_back('>');
      return;
    }
    default:
      *out += v.Str();
  }
}

void AppendJsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const auto u = static_cast<unsigned char>(s[i]);
    if (u >= 0x80 && ensure_ascii) {
      uint32_t cp = NextCodePoint(s, &i);
      if (cp >= 0x10000) {  // surrogate pair, as Python writes it
        cp -= 0x10000;
        *out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        *out += fmt::format("\\u{:04x}", cp);
      }
      continue;
    }
    ++i;
    switch (u) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (u < 0x20) {
          *out += fmt::format("\\u{:04x}", u);
        } else {
          out->push_back(static_cast<char>(u));
        }
    }
  }
  out->push_back('"');
}

bool DumpJsonAt(const Value& v, const JsonDumpOptions& o, int depth, std::string* out) {
  const std::string& item_sep =
      !o.item_separator.empty() ? o.item_separator : (o.indent >= 0 ? "," : ", ");
  const std::string& key_sep = !o.key_separator.empty() ? o.key_separator : ": ";
  auto newline = [&](int level) {
    if (o.indent < 0) return;
    out->push_back('\n');
    out->append(static_cast<size_t>(o.indent * level), ' ');
  };
  switch (v.type()) {
    case Value::Type::kNone:
      *out += "null";
      return true;
    case Value::Type::kBool:
      *out += v.AsBool() ? "true" : "false";
      return true;
    case Value::Type::kInt:
      *out += std::to_string(v.AsInt());
      return true;
    case Value::Type::kFloat: {
      const double d = v.AsDouble();
      *out += std::isnan(d)   ? "NaN"
              : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity")
                              : FloatRepr(d);
      return true;
    }
    case Value::Type::kString:
      AppendJsonString(v.AsString(), o.ensure_ascii, out);
      return true;
    case Value::Type::kList: {
      if (v.AsList().empty()) {
        *out += "[]";
        return true;
      }
      out->push_back('[');
      bool first = true;
      for (const Value& e : v.AsList()) {
        if (!first) *out += item_sep;
        first = false;
        newline(depth + 1);
        if (!DumpJsonAt(e, o, depth + 1, out)) return false;
      }
      newline(depth);
      out->push_back(']');
      return true;
    }
    case Value::Type::kDict: {
      if (v.AsDict().items.empty()) {
        *out += "{}";
        return true;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : v.AsDict().items) items.push_back(&item);
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto* a, const auto* b) { return a->first < b->first; });
      }
      out->push_back('{');
      bool first = true;
      for (const auto* item : items) {
        if (!first) *out += item_sep;
        first = false;
        newline(depth + 1);
        AppendJsonString(item->first, o.ensure_ascii, out);
        *out += key_sep;
        if (!DumpJsonAt(item->second, o, depth + 1, out)) return false;
      }
      newline(depth);
      out->push_back('}');
      return true;
    }
    default:
      return false;
  }
}

}  // namespace

std::string Value::Str() const {
  switch (type_) {
    case Type::kUndefined:
      return "";
    case Type::kNone:
      return "None";
    case Type::kBool:
      return int_ ? "True" : "False";
    case Type::kInt:
      return std::to_string(int_);
    case Type::kFloat:
      return FloatRepr(float_);
    case Type::kString:
      return str_;
    case Type::kFunction:
      return "<function " + function_->name + ">";
    default: {
      std::string out;
      AppendRepr(*this, &out);
      return out;
    }
  }
}

std::string Value::Repr() const {
  std::string out;
  AppendRepr(*this, &out);
  return out;
}

std::string Value::TypeName() const {
  switch (type_) {
    case Type::kUndefined:
      return "undefined";
    case Type::kNone:
      return "NoneType";
    case Type::kBool:
      return "bool";
    case Type::kInt:
      return "int";
    case Type::kFloat:
      return "float";
    case Type::kString:
      return "str";
    case Type::kList:
      return is_tuple_ ? "tuple" : "list";
    case Type::kDict:
      return is_namespace_ ? "Namespace" : "dict";
    case Type::kFunction:
      return "function";
  }
  return "?";
}

bool Equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integer() && b.is_integer()) return a.AsInt() == b.AsInt();
    return a.AsDouble() == b.AsDouble();
  }
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Value::Type::kUndefined:
    case Value::Type::kNone:
      return true;
    case Value::Type::kString:
      return a.AsString() == b.AsString();
    case Value::Type::kList: {
      const List &x = a.AsList(), &y = b.AsList();
      if (a.is_tuple() != b.is_tuple() || x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!Equal(x[i], y[i])) return false;
      }
      return true;
    }
    case Value::Type::kDict: {
      if (a.is_namespace() || b.is_namespace()) return &a.AsDict() == &b.AsDict();
      const Dict &x = a.AsDict(), &y = b.AsDict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* w = y.Find(k);
        if (w == nullptr || !Equal(v, *w)) return false;
      }
      return true;
    }
    case Value::Type::kFunction:
      return &a.AsFunction() == &b.AsFunction();
    default:
      return false;
  }
}

bool Less(const Value& a, const Value& b, bool* ok) {
  *ok = true;
  if (a.is_number() && b.is_number()) {
    if (a.is_integer() && b.is_integer()) return a.AsInt() < b.AsInt();
    return a.AsDouble() < b.AsDouble();
  }
  if (a.is_string() && b.is_string()) return a.AsString() < b.AsString();  // code point order
  if (a.is_list() && b.is_list()) {
    const List &x = a.AsList(), &y = b.AsList();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (Equal(x[i], y[i])) continue;
      return Less(x[i], y[i], ok);
    }
    return x.size() < y.size();
  }
  *ok = false;
  return false;
}

bool DumpJson(const Value& v, const JsonDumpOptions& options, std::string* out) {
  return DumpJsonAt(v, options, 0, out);
}

}  // namespace dsv3::jinja
