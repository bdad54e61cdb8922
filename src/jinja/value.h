// Values of the Jinja template interpreter, with Python semantics where templates can see them:
// truthiness, str() and repr() text, equality and ordering, and json.dumps for `tojson`.
// Lists and dicts are shared immutable data (transformers renders chat templates in Jinja's
// immutable sandbox); only namespace() objects are mutable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/json.h"

namespace dsv3::jinja {

class Value;
class Interpreter;
using List = std::vector<Value>;
struct Dict;

// Arguments of a call: f(a, b, key=c).
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A function value (builtin global, macro, bound method, loop.cycle). `offset` is where the
// call is in the template source, for error messages.
struct Function {
  std::string name;
  std::function<Value(Interpreter&, CallArgs&, size_t offset)> call;
};

class Value {
 public:
  enum class Type { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };

  Value() = default;  // undefined
  static Value Undefined(std::string name) {
    Value v;
    v.str_ = std::move(name);
    return v;
  }
  static Value None() { return Value(Type::kNone); }
  static Value Bool(bool b) {
    Value v(Type::kBool);
    v.int_ = b;
    return v;
  }
  static Value Int(int64_t i) {
    Value v(Type::kInt);
    v.int_ = i;
    return v;
  }
  static Value Float(double f) {
    Value v(Type::kFloat);
    v.float_ = f;
    return v;
  }
  static Value String(std::string s) {
    Value v(Type::kString);
    v.str_ = std::move(s);
    return v;
  }
  static Value MakeList(List items);
  // A tuple: a list that Python prints as (a, b) and never equals a list.
  static Value MakeTuple(List items);
  static Value MakeDict(Dict dict);
  // namespace(): a dict whose attributes `set ns.x = ...` may change.
  static Value MakeNamespace(Dict dict);
  static Value MakeFunction(Function f);
  static Value FromJson(const OrderedJson& j);

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::kUndefined; }
  bool is_none() const { return type_ == Type::kNone; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_list() const { return type_ == Type::kList; }  // lists and tuples
  bool is_tuple() const { return type_ == Type::kList && is_tuple_; }
  bool is_dict() const { return type_ == Type::kDict; }
  bool is_namespace() const { return type_ == Type::kDict && is_namespace_; }
  bool is_number() const {  // bool counts, as in Python
    return type_ == Type::kInt || type_ == Type::kFloat || type_ == Type::kBool;
  }
  bool is_integer() const { return type_ == Type::kInt || type_ == Type::kBool; }

  bool AsBool() const { return int_ != 0; }
  int64_t AsInt() const { return type_ == Type::kFloat ? static_cast<int64_t>(float_) : int_; }
  double AsDouble() const { return type_ == Type::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& AsString() const { return str_; }  // string value, or undefined's name
  const List& AsList() const { return *list_; }
  const Dict& AsDict() const { return *dict_; }
  Dict& MutableNamespace() const { return *dict_; }
  const Function& AsFunction() const { return *function_; }

  bool Truthy() const;
  // Python str(): None, True, 1.5, 'a' inside lists, ...; undefined gives "".
  std::string Str() const;
  // Python repr().
  std::string Repr() const;
  // Python type name for error messages ("str", "list", "NoneType", "undefined", ...).
  std::string TypeName() const;

 private:
  explicit Value(Type t) : type_(t) {}
  Type type_ = Type::kUndefined;
  bool is_namespace_ = false;
  bool is_tuple_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  std::shared_ptr<const List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Function> function_;
};

// Insertion-ordered string-keyed map (Python dicts keep insertion order).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* Find(std::string_view key) const;
  void Set(const std::string& key, Value value);
};

// Python ==, and < for numbers, strings and lists (`ok` false when the types do not order).
bool Equal(const Value& a, const Value& b);
bool Less(const Value& a, const Value& b, bool* ok);

// json.dumps(value, ensure_ascii, indent, separators, sort_keys) as Python writes it.
// indent < 0: none. Throws dsv3::Error (via `fail`) on values JSON cannot hold.
struct JsonDumpOptions {
  bool ensure_ascii = false;
  int indent = -1;
  std::string item_separator, key_separator;  // empty: Python's defaults for `indent`
  bool sort_keys = false;
};
bool DumpJson(const Value& v, const JsonDumpOptions& options, std::string* out);

// Python float repr: shortest round-trip digits, always with a '.', 'e', "inf" or "nan".
std::string FloatRepr(double d);

}  // namespace dsv3::jinja
