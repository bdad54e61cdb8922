#include "runtime/json_schema.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <optional>

#include "core/unicode.h"

namespace dsv3 {
namespace {

// The instance types, one bit each; "number" includes the integers.
enum TypeBits : uint8_t {
  kNullBit = 1,
  kBooleanBit = 2,
  kObjectBit = 4,
  kArrayBit = 8,
  kStringBit = 16,
  kNumberBit = 32,
  kIntegerBit = 64,
  kAnyType = 127,
};
constexpr std::pair<std::string_view, uint8_t> kTypeNames[] = {
    {"null", kNullBit},       {"boolean", kBooleanBit}, {"object", kObjectBit},
    {"array", kArrayBit},     {"string", kStringBit},   {"number", kNumberBit},
    {"integer", kIntegerBit},
};
constexpr std::string_view kAnnotations[] = {"title",    "description", "default",  "examples",
                                             "$schema",  "$id",         "$comment", "deprecated",
                                             "readOnly", "writeOnly"};
constexpr std::string_view kKeywords[] = {"type",  "properties", "required", "additionalProperties",
                                          "items", "enum",       "const"};
constexpr std::string_view kLiterals[3] = {"true", "false", "null"};
constexpr int kMaxProperties = 64;  // a Frame's `seen` bits
constexpr int kMaxMagnitude = 308;  // integer digits + exponent: numbers below 1e308
constexpr size_t kMaxNodes = std::numeric_limits<uint16_t>::max();
constexpr size_t kMaxEnumValues = std::numeric_limits<uint16_t>::max();

bool IsSpace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
int HexValue(uint8_t c) {
  if (IsDigit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
std::string Join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}
std::string TypeNames(uint8_t types) {
  if (types & kNumberBit) types &= ~kIntegerBit;
  std::string s;
  for (const auto& [name, bit] : kTypeNames) {
    if (!(types & bit)) continue;
    if (!s.empty()) s += " or ";
    s += name;
  }
  return s;
}

}  // namespace

// One schema (sub-schema) of the compiled tree.
struct SchemaNode {
  uint8_t types = kAnyType;
  // enum / const: the values (for validation) and their compact serializations, sorted by bytes
  // and without repeats (for the recognizer).
  bool has_enum = false;
  std::vector<Json> values;
  std::vector<std::string> enum_bytes;
  // enum_min[k][i]: the shortest of enum_bytes[i, i + 2^k), so that the shortest value left in
  // any range is two lookups.
  std::vector<std::vector<uint32_t>> enum_min;
  // Objects. listed: only keys[] are written (`properties` given, or additionalProperties false);
  // closed: additionalProperties false, other keys do not validate.
  bool listed = false, closed = false;
  std::vector<std::string> keys;     // [P] compact serialized names, quotes included, sorted
  std::vector<std::string> names;    // [P] the same names, unquoted
  std::vector<uint16_t> children;    // [P] their schemas
  uint64_t required = 0;             // bit i: keys[i] is required
  uint64_t all = 0;                  // bit i for each i < P
  std::vector<int64_t> member_cost;  // [P] bytes of ',' key ':' and the shortest value
  uint16_t items = 0;                // arrays: the elements' schema
  int64_t min_len = 1;               // the shortest valid value, in bytes
};

struct JsonSchema {
  std::vector<SchemaNode> nodes;  // [0]: any value (the values of free objects and arrays)
  uint16_t root = 0;
};

namespace {

// The shortest of enum values [lo, hi) (lo < hi).
int64_t ShortestEnum(const SchemaNode& n, uint32_t lo, uint32_t hi) {
  const int k = std::bit_width(hi - lo) - 1;  // 2^k <= hi - lo < 2^(k + 1)
  return std::min(n.enum_min[k][lo], n.enum_min[k][hi - (uint32_t{1} << k)]);
}

// Validation over compiled nodes; `path` is the instance location, dot-separated.
class Validator {
 public:
  Validator(const std::vector<SchemaNode>& nodes, std::string* why) : nodes_(nodes), why_(why) {}

  bool Validate(uint16_t node, const Json& v, int depth, const std::string& path) const {
    const SchemaNode& n = nodes_[node];
    if (n.has_enum) {
      for (const Json& x : n.values) {
        if (v == x) return true;
      }
      return Fail(path, n.values.size() == 1 ? "not the const value " + n.values[0].dump()
                                             : "not one of the enum values");
    }
    bool ok;
    if (v.is_number()) {
      const bool integral =
          v.is_number_integer() ||
          (std::isfinite(v.get<double>()) && v.get<double>() == std::floor(v.get<double>()));
      ok = (n.types & kNumberBit) || ((n.types & kIntegerBit) && integral);
    } else {
      const uint8_t bit = v.is_null()      ? kNullBit
                          : v.is_boolean() ? kBooleanBit
                          : v.is_object()  ? kObjectBit
                          : v.is_array()   ? kArrayBit
                          : v.is_string()  ? kStringBit
                                           : 0;
      ok = (n.types & bit) != 0;
    }
    if (!ok) return Fail(path, "expected " + TypeNames(n.types) + ", got " + v.type_name());
    if (!v.is_object() && !v.is_array()) return true;
    if (depth == SchemaPrefix::kMaxDepth) {
      return Fail(path,
                  "nested deeper than " + std::to_string(SchemaPrefix::kMaxDepth) + " containers");
    }
    if (v.is_array()) {
      for (size_t i = 0; i < v.size(); ++i) {
        if (!Validate(n.items, v[i], depth + 1, Join(path, std::to_string(i)))) return false;
      }
      return true;
    }
    for (const auto& [key, value] : v.items()) {
      uint16_t child = 0;  // any value, for free objects and allowed additional keys
      if (n.listed) {
        const auto it = std::find(n.names.begin(), n.names.end(), key);
        if (it != n.names.end()) {
          child = n.children[static_cast<size_t>(it - n.names.begin())];
        } else if (n.closed) {
          return Fail(Join(path, key), "property not allowed (additionalProperties is false)");
        }
      }
      if (!Validate(child, value, depth + 1, Join(path, key))) return false;
    }
    for (size_t i = 0; i < n.names.size(); ++i) {
      if ((n.required >> i & 1) && !v.contains(n.names[i])) {
        return Fail(path, "missing required property \"" + n.names[i] + "\"");
      }
    }
    return true;
  }

 private:
  bool Fail(const std::string& path, const std::string& message) const {
    if (why_) *why_ = path.empty() ? message : path + ": " + message;
    return false;
  }
  const std::vector<SchemaNode>& nodes_;
  std::string* why_;
};

// Schema JSON -> nodes; the first error wins.
class Compiler {
 public:
  Compiler() { nodes_.emplace_back(); }  // [0]: any value, min_len 1 ("0")

  std::optional<uint16_t> Compile(const Json& s, const std::string& path, int level) {
    if (level > SchemaPrefix::kMaxDepth) {
      return Fail(path, "schemas nested deeper than " + std::to_string(SchemaPrefix::kMaxDepth) +
                            " levels are not supported");
    }
    if (s.is_boolean()) {
      if (s.get<bool>()) return 0;
      return Fail(path, "the schema false accepts nothing");
    }
    if (!s.is_object()) {
      return Fail(path,
                  std::string("a schema must be an object or a boolean, not ") + s.type_name());
    }
    for (const auto& [key, value] : s.items()) {
      if (std::find(std::begin(kAnnotations), std::end(kAnnotations), key) !=
          std::end(kAnnotations)) {
        continue;
      }
      if (std::find(std::begin(kKeywords), std::end(kKeywords), key) == std::end(kKeywords)) {
        return Fail(Join(path, key),
                    "unsupported keyword \"" + key +
                        "\" (supported: type, properties, required, additionalProperties, "
                        "items, enum, const)");
      }
    }
    SchemaNode n;
    if (const auto it = s.find("type"); it != s.end()) {
      if (!Types(*it, Join(path, "type"), &n.types)) return std::nullopt;
    }
    if (const auto it = s.find("properties"); it != s.end()) {
      const std::string at = Join(path, "properties");
      if (!it->is_object()) return Fail(at, "must be an object of schemas");
      if (it->size() > kMaxProperties) {
        return Fail(at, "more than " + std::to_string(kMaxProperties) + " properties");
      }
      struct Property {
        std::string key, name;
        uint16_t child;
      };
      std::vector<Property> props;
      for (const auto& [name, sub] : it->items()) {
        std::string key;
        if (!Serialize(Json(name), &key)) return Fail(Join(at, name), "name is not valid UTF-8");
        const std::optional<uint16_t> child = Compile(sub, Join(at, name), level + 1);
        if (!child) return std::nullopt;
        props.push_back({std::move(key), name, *child});
      }
      std::sort(props.begin(), props.end(),
                [](const Property& a, const Property& b) { return a.key < b.key; });
      for (Property& p : props) {
        n.keys.push_back(std::move(p.key));
        n.names.push_back(std::move(p.name));
        n.children.push_back(p.child);
      }
      n.listed = true;
      n.all = props.size() == 64 ? ~uint64_t{0} : (uint64_t{1} << props.size()) - 1;
    }
    if (const auto it = s.find("additionalProperties"); it != s.end()) {
      if (!it->is_boolean()) {
        return Fail(Join(path, "additionalProperties"),
                    "only true or false is supported (not a schema)");
      }
      if (!it->get<bool>()) n.closed = n.listed = true;
    }
    if (const auto it = s.find("required"); it != s.end()) {
      const std::string at = Join(path, "required");
      if (!it->is_array()) return Fail(at, "must be an array of property names");
      for (size_t i = 0; i < it->size(); ++i) {
        const Json& r = (*it)[i];
        const std::string at_i = Join(at, std::to_string(i));
        if (!r.is_string()) return Fail(at_i, "must be a property name (a string)");
        const auto found = std::find(n.names.begin(), n.names.end(), r.get<std::string>());
        if (found == n.names.end()) {
          return Fail(at_i, "\"" + r.get<std::string>() + "\" is not listed in properties");
        }
        n.required |= uint64_t{1} << (found - n.names.begin());
      }
    }
    if (const auto it = s.find("items"); it != s.end()) {
      if (it->is_array()) {
        return Fail(Join(path, "items"), "an array of item schemas (tuple) is not supported");
      }
      const std::optional<uint16_t> child = Compile(*it, Join(path, "items"), level + 1);
      if (!child) return std::nullopt;
      n.items = *child;
    }
    // The shortest value: per type, and for objects the required members with theirs.
    for (size_t i = 0; i < n.keys.size(); ++i) {
      n.member_cost.push_back(2 + static_cast<int64_t>(n.keys[i].size()) +
                              nodes_[n.children[i]].min_len);
    }
    n.min_len = std::numeric_limits<int64_t>::max();
    if (n.types & (kNumberBit | kIntegerBit)) n.min_len = 1;  // 0
    if (n.types & (kStringBit | kArrayBit)) n.min_len = std::min<int64_t>(n.min_len, 2);
    if (n.types & (kNullBit | kBooleanBit)) n.min_len = std::min<int64_t>(n.min_len, 4);
    if (n.types & kObjectBit) {
      int64_t object = 2;  // {}
      if (n.required != 0) {
        object = 1;  // '{' and the members (the first without its ','), then '}'
        for (size_t i = 0; i < n.keys.size(); ++i) {
          if (n.required >> i & 1) object += n.member_cost[i];
        }
      }
      n.min_len = std::min(n.min_len, object);
    }
    if (nodes_.size() >= kMaxNodes) return Fail(path, "too many schemas");
    const uint16_t index = static_cast<uint16_t>(nodes_.size());
    nodes_.push_back(std::move(n));
    if (s.contains("enum") || s.contains("const")) {
      if (!Enum(s, path, index)) return std::nullopt;
    }
    return index;
  }

  std::vector<SchemaNode> take() { return std::move(nodes_); }
  SchemaError error() const { return *error_; }

 private:
  std::nullopt_t Fail(const std::string& path, const std::string& message) {
    if (!error_) error_ = SchemaError{path, message};
    return std::nullopt;
  }
  bool Error(const std::string& path, const std::string& message) {
    Fail(path, message);
    return false;
  }
  static bool Serialize(const Json& v, std::string* out) {
    try {
      *out = v.dump();
    } catch (const Json::exception&) {
      return false;
    }
    return true;
  }
  bool Types(const Json& t, const std::string& at, uint8_t* types) {
    auto bit = [](const Json& name) -> uint8_t {
      if (!name.is_string()) return 0;
      for (const auto& [n, b] : kTypeNames) {
        if (name.get<std::string>() == n) return b;
      }
      return 0;
    };
    if (t.is_string()) {
      *types = bit(t);
      if (*types == 0) return Error(at, "unknown type \"" + t.get<std::string>() + "\"");
      return true;
    }
    if (!t.is_array() || t.empty()) {
      return Error(at, "must be a type name or a non-empty array of them");
    }
    *types = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      const uint8_t b = bit(t[i]);
      if (b == 0) {
        return Error(Join(at, std::to_string(i)), "unknown type " + t[i].dump());
      }
      *types |= b;
    }
    return true;
  }
  // enum and const of node `index` (compiled without them): the values that also match the rest
  // of the schema, as bytes to match.
  bool Enum(const Json& s, const std::string& path, uint16_t index) {
    std::vector<Json> values;
    std::string at = Join(path, "const");
    if (const auto e = s.find("enum"); e != s.end()) {
      at = Join(path, "enum");
      if (!e->is_array() || e->empty()) return Error(at, "must be a non-empty array");
      for (const Json& v : *e) {
        if (!s.contains("const") || v == s.at("const")) values.push_back(v);
      }
    } else {
      values.push_back(s.at("const"));
    }
    SchemaNode& n = nodes_[index];
    std::vector<Json> kept;
    for (Json& v : values) {
      std::string bytes;
      if (!Serialize(v, &bytes)) return Error(at, "a value is not valid UTF-8");
      if (!Validator(nodes_, nullptr).Validate(index, v, 0, "")) continue;
      n.enum_bytes.push_back(std::move(bytes));
      kept.push_back(std::move(v));
    }
    if (kept.empty()) {
      return Error(at, "no value matches the rest of the schema (and const)");
    }
    if (kept.size() > kMaxEnumValues) return Error(at, "too many values");
    std::sort(n.enum_bytes.begin(), n.enum_bytes.end());
    n.enum_bytes.erase(std::unique(n.enum_bytes.begin(), n.enum_bytes.end()), n.enum_bytes.end());
    n.values = std::move(kept);
    n.has_enum = true;
    const size_t count = n.enum_bytes.size();
    n.enum_min.emplace_back();
    for (const std::string& b : n.enum_bytes) {
      n.enum_min[0].push_back(static_cast<uint32_t>(b.size()));
    }
    for (size_t k = 1; (size_t{1} << k) <= count; ++k) {
      const std::vector<uint32_t>& half = n.enum_min[k - 1];
      std::vector<uint32_t> level(count - (size_t{1} << k) + 1);
      for (size_t i = 0; i < level.size(); ++i) {
        level[i] = std::min(half[i], half[i + (size_t{1} << (k - 1))]);
      }
      n.enum_min.push_back(std::move(level));
    }
    n.min_len = ShortestEnum(n, 0, static_cast<uint32_t>(count));
    return true;
  }

  std::vector<SchemaNode> nodes_;
  std::optional<SchemaError> error_;
};

// The byte at `pos` of s, or -1 past its end.
int ByteAt(const std::string& s, uint32_t pos) {
  return pos < s.size() ? static_cast<uint8_t>(s[pos]) : -1;
}

// Narrows [*lo, *hi) of sorted strings sharing their first `pos` bytes to those whose byte at
// `pos` is c (a contiguous run).
void Narrow(const std::vector<std::string>& v, uint32_t pos, uint8_t c, uint16_t* lo,
            uint16_t* hi) {
  uint32_t l = *lo, h = *hi;
  while (l < h) {
    const uint32_t m = (l + h) / 2;
    if (ByteAt(v[m], pos) < c) {
      l = m + 1;
    } else {
      h = m;
    }
  }
  const uint32_t first = l;
  h = *hi;
  while (l < h) {
    const uint32_t m = (l + h) / 2;
    if (ByteAt(v[m], pos) <= c) {
      l = m + 1;
    } else {
      h = m;
    }
  }
  *lo = static_cast<uint16_t>(first);
  *hi = static_cast<uint16_t>(l);
}

// Bits lo..hi-1 (lo < hi <= 64).
uint64_t RangeBits(uint16_t lo, uint16_t hi) {
  const uint64_t below_hi = hi >= 64 ? ~uint64_t{0} : (uint64_t{1} << hi) - 1;
  return below_hi & ~((uint64_t{1} << lo) - 1);
}

}  // namespace

std::variant<std::shared_ptr<const JsonSchema>, SchemaError> CompileJsonSchema(const Json& schema) {
  Compiler c;
  const std::optional<uint16_t> root = c.Compile(schema, "", 1);
  if (!root) return c.error();
  auto s = std::make_shared<JsonSchema>();
  s->nodes = c.take();
  s->root = *root;
  return std::shared_ptr<const JsonSchema>(std::move(s));
}

bool ValidatesJsonSchema(const JsonSchema& schema, const Json& value, std::string* why) {
  return Validator(schema.nodes, why).Validate(schema.root, value, 0, "");
}

SchemaPrefix::SchemaPrefix(const JsonSchema* schema) : schema_(schema) {
  head_.node = schema->root;
}

void SchemaPrefix::EndValue() {
  const uint8_t depth = head_.depth;
  head_ = Head{};
  head_.mode = depth == 0 ? Mode::kDone : Mode::kAfter;
  head_.depth = depth;
}

bool SchemaPrefix::Close(uint8_t c) {
  Head& h = head_;
  if (h.depth == 0) return false;
  const Frame& f = frames_[h.depth - 1];
  if ((f.array != 0) != (c == ']')) return false;
  if (!f.array && (schema_->nodes[f.node].required & ~f.seen) != 0) return false;
  --h.depth;
  EndValue();
  return true;
}

bool SchemaPrefix::StartKey() {
  Head& h = head_;
  const Frame& f = frames_[h.depth - 1];
  const SchemaNode& n = schema_->nodes[f.node];
  if (!n.listed) {  // a free object: any string
    h.mode = Mode::kString;
    h.key = 1;
    h.utf8_left = 0;
    return true;
  }
  if ((n.all & ~f.seen) == 0) return false;  // no key left
  h.mode = Mode::kKeyMatch;
  h.pos = 1;  // every key starts with '"'
  h.lo = 0;
  h.hi = static_cast<uint16_t>(n.keys.size());
  return true;
}

bool SchemaPrefix::Value(uint8_t c) {
  Head& h = head_;
  const SchemaNode& n = schema_->nodes[h.node];
  if (n.has_enum) {
    uint16_t lo = 0, hi = static_cast<uint16_t>(n.enum_bytes.size());
    Narrow(n.enum_bytes, 0, c, &lo, &hi);
    if (lo == hi) return false;
    h.mode = Mode::kEnum;
    h.lo = lo, h.hi = hi, h.pos = 1;
    if (hi - lo == 1 && n.enum_bytes[lo].size() == 1) EndValue();
    return true;
  }
  switch (c) {
    case '{':
    case '[': {
      const bool array = c == '[';
      if (!(n.types & (array ? kArrayBit : kObjectBit)) || h.depth == kMaxDepth) return false;
      frames_[h.depth++] = Frame{0, h.node, static_cast<uint8_t>(array), {}};
      if (array) {
        h.mode = Mode::kArrayFirst;
        h.node = n.items;
      } else {
        h.mode = Mode::kObjectFirst;
      }
      return true;
    }
    case '"':
      if (!(n.types & kStringBit)) return false;
      h.mode = Mode::kString;
      h.key = 0;
      h.utf8_left = 0;
      return true;
    case 't':
    case 'f':
    case 'n':
      if (!(n.types & (c == 'n' ? kNullBit : kBooleanBit))) return false;
      h.mode = Mode::kLiteral;
      h.literal = c == 't' ? 0 : c == 'f' ? 1 : 2;
      h.literal_pos = 1;
      return true;
    default:
      if ((c != '-' && !IsDigit(c)) || !(n.types & (kNumberBit | kIntegerBit))) return false;
      h.mode = Mode::kNumber;
      h.integer = !(n.types & kNumberBit);
      h.num = c == '-' ? Num::kMinus : c == '0' ? Num::kZero : Num::kInt;
      h.digits = c == '-' ? 0 : 1;
      h.exp = 0;
      h.exp_negative = 0;
      return true;
  }
}

bool SchemaPrefix::Feed(uint8_t c) {
  Head& h = head_;
  switch (h.mode) {
    case Mode::kValue:
      return IsSpace(c) || Value(c);
    case Mode::kArrayFirst:
      if (IsSpace(c)) return true;
      return c == ']' ? Close(c) : Value(c);
    case Mode::kObjectFirst:
      if (IsSpace(c)) return true;
      if (c == '}') return Close(c);
      return c == '"' && StartKey();
    case Mode::kKey:
      if (IsSpace(c)) return true;
      return c == '"' && StartKey();
    case Mode::kKeyMatch: {
      Frame& f = frames_[h.depth - 1];
      const SchemaNode& n = schema_->nodes[f.node];
      uint16_t lo = h.lo, hi = h.hi;
      Narrow(n.keys, h.pos, c, &lo, &hi);
      if (lo == hi || (RangeBits(lo, hi) & ~f.seen) == 0) return false;  // only keys present
      h.lo = lo, h.hi = hi, ++h.pos;
      if (n.keys[lo].size() == h.pos) {  // the whole key (keys end at their quote: lo + 1 == hi)
        f.seen |= uint64_t{1} << lo;
        h.node = n.children[lo];
        h.mode = Mode::kColon;
      }
      return true;
    }
    case Mode::kColon:
      if (IsSpace(c)) return true;
      if (c != ':') return false;
      h.mode = Mode::kValue;
      return true;
    case Mode::kAfter: {
      if (IsSpace(c)) return true;
      const Frame& f = frames_[h.depth - 1];
      if (c != ',') return (c == '}' || c == ']') && Close(c);
      const SchemaNode& n = schema_->nodes[f.node];
      if (f.array) {
        h.mode = Mode::kValue;
        h.node = n.items;
        return true;
      }
      if (n.listed && (n.all & ~f.seen) == 0) return false;  // every key is there already
      h.mode = Mode::kKey;
      return true;
    }
    case Mode::kString:
      if (h.utf8_left > 0) {  // inside a multi-byte character
        if (c < h.utf8_lo || c > h.utf8_hi) return false;
        --h.utf8_left;
        h.utf8_lo = 0x80, h.utf8_hi = 0xBF;
        return true;
      }
      if (c == '"') {
        if (h.key) {  // a free object's key: any value follows
          h.key = 0;
          h.mode = Mode::kColon;
          h.node = 0;
        } else {
          EndValue();
        }
        return true;
      }
      if (c == '\\') {
        h.mode = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return false;  // control characters must be escaped
      if (c < 0x80) return true;
      // UTF-8 lead bytes and the range of the byte after them (no overlongs, no surrogates).
      if (c >= 0xC2 && c <= 0xDF) {
        h.utf8_left = 1;
      } else if (c >= 0xE0 && c <= 0xEF) {
        h.utf8_left = 2;
        if (c == 0xE0) h.utf8_lo = 0xA0;
        if (c == 0xED) h.utf8_hi = 0x9F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        h.utf8_left = 3;
        if (c == 0xF0) h.utf8_lo = 0x90;
        if (c == 0xF4) h.utf8_hi = 0x8F;
      } else {
        return false;
      }
      return true;
    case Mode::kEscape:
      if (c == 'u') {
        h.mode = Mode::kUnicode;
        h.hex_left = 4;
        h.code = 0;
        h.low = 0;
        return true;
      }
      if (std::string_view("\"\\/bfnrt").find(static_cast<char>(c)) == std::string_view::npos) {
        return false;
      }
      h.mode = Mode::kString;
      return true;
    case Mode::kUnicode: {
      // \uXXXX; a high surrogate (D800-DBFF) must be followed by a low one (\uDC00-\uDFFF), and
      // a low one may not stand alone (nlohmann, like most parsers, refuses both).
      const int d = HexValue(c);
      if (d < 0) return false;
      const int before = 4 - h.hex_left;  // digits already read
      if (h.low) {
        if ((before == 0 && d != 0xD) || (before == 1 && d < 0xC)) return false;
      } else if (before == 1 && h.code == 0xD && d >= 0xC) {
        return false;
      }
      h.code = static_cast<uint16_t>(h.code << 4 | d);
      if (--h.hex_left > 0) return true;
      if (!h.low && h.code >= 0xD800 && h.code <= 0xDBFF) {
        h.mode = Mode::kLowBackslash;
      } else {
        h.mode = Mode::kString;
        h.low = 0;
        h.code = 0;
      }
      return true;
    }
    case Mode::kLowBackslash:
      if (c != '\\') return false;
      h.mode = Mode::kLowU;
      return true;
    case Mode::kLowU:
      if (c != 'u') return false;
      h.mode = Mode::kUnicode;
      h.hex_left = 4;
      h.code = 0;
      h.low = 1;
      return true;
    case Mode::kNumber:
      switch (h.num) {
        case Num::kMinus:
          if (!IsDigit(c)) return false;
          h.num = c == '0' ? Num::kZero : Num::kInt;
          h.digits = 1;
          return true;
        case Num::kZero:
        case Num::kInt:
        case Num::kFrac:
        case Num::kExp:
          if (IsDigit(c) && h.num != Num::kZero) {
            if (h.num == Num::kInt) {
              if (h.digits + 1 > kMaxMagnitude) return false;
              ++h.digits;
            } else if (h.num == Num::kExp) {
              h.exp = static_cast<uint16_t>(std::min(h.exp * 10 + (c - '0'), 10000));
              if (!h.exp_negative && h.digits + h.exp > kMaxMagnitude) return false;
            }
            return true;
          }
          if (c == '.' && (h.num == Num::kZero || h.num == Num::kInt)) {
            if (h.integer) return false;
            h.num = Num::kDot;
            return true;
          }
          if ((c == 'e' || c == 'E') && h.num != Num::kExp) {
            if (h.integer) return false;
            h.num = Num::kE;
            return true;
          }
          EndValue();  // the number ended; c belongs to what follows
          return Feed(c);
        case Num::kDot:
          if (!IsDigit(c)) return false;
          h.num = Num::kFrac;
          return true;
        case Num::kE:
          if (c == '+' || c == '-') {
            h.num = Num::kESign;
            h.exp_negative = c == '-';
            return true;
          }
          [[fallthrough]];
        case Num::kESign:
          if (!IsDigit(c)) return false;
          h.exp = static_cast<uint16_t>(c - '0');
          if (!h.exp_negative && h.digits + h.exp > kMaxMagnitude) return false;
          h.num = Num::kExp;
          return true;
      }
      return false;
    case Mode::kLiteral: {
      const std::string_view lit = kLiterals[h.literal];
      if (c != static_cast<uint8_t>(lit[h.literal_pos])) return false;
      if (++h.literal_pos == lit.size()) EndValue();
      return true;
    }
    case Mode::kEnum: {
      const SchemaNode& n = schema_->nodes[h.node];
      uint16_t lo = h.lo, hi = h.hi;
      Narrow(n.enum_bytes, h.pos, c, &lo, &hi);
      if (lo < hi) {
        h.lo = lo, h.hi = hi, ++h.pos;
        if (hi - lo == 1 && n.enum_bytes[lo].size() == h.pos) EndValue();
        return true;
      }
      // A whole value that a longer one extends (1 and 12) ends here; c belongs to what follows.
      if (n.enum_bytes[h.lo].size() != h.pos) return false;
      EndValue();
      return Feed(c);
    }
    case Mode::kDone:
      return IsSpace(c);
  }
  return false;
}

bool SchemaPrefix::complete() const {
  if (head_.depth != 0) return false;
  switch (head_.mode) {
    case Mode::kDone:
      return true;
    case Mode::kNumber:
      return head_.num == Num::kZero || head_.num == Num::kInt || head_.num == Num::kFrac ||
             head_.num == Num::kExp;
    case Mode::kEnum:
      return schema_->nodes[head_.node].enum_bytes[head_.lo].size() == head_.pos;
    default:
      return false;
  }
}

int64_t SchemaPrefix::FrameCost(const Frame& f) const {
  if (f.array) return 1;  // ]
  const SchemaNode& n = schema_->nodes[f.node];
  int64_t cost = 1;  // }
  for (uint64_t missing = n.required & ~f.seen; missing != 0; missing &= missing - 1) {
    cost += n.member_cost[static_cast<size_t>(std::countr_zero(missing))];
  }
  return cost;
}

int64_t SchemaPrefix::KeyCost(const Frame& f, uint32_t pos, uint16_t lo, uint16_t hi) const {
  // The rest of one key of [lo, hi) not yet present, ':' and its shortest value, then the
  // missing required members other than that key and '}'.
  const SchemaNode& n = schema_->nodes[f.node];
  const int64_t base = FrameCost(f);
  int64_t best = std::numeric_limits<int64_t>::max();
  for (uint32_t i = lo; i < hi; ++i) {
    if (f.seen >> i & 1) continue;
    const int64_t cost = static_cast<int64_t>(n.keys[i].size() - pos) + 1 +
                         schema_->nodes[n.children[i]].min_len + base -
                         ((n.required >> i & 1) ? n.member_cost[i] : 0);
    best = std::min(best, cost);
  }
  return best;
}

int64_t SchemaPrefix::ClosingBytes() const {
  const Head& h = head_;
  const bool in_key =
      h.mode == Mode::kObjectFirst || h.mode == Mode::kKey || h.mode == Mode::kKeyMatch ||
      (h.key && (h.mode == Mode::kString || h.mode == Mode::kEscape || h.mode == Mode::kUnicode ||
                 h.mode == Mode::kLowBackslash || h.mode == Mode::kLowU));
  // The open containers' closings once their current member ends (the innermost object's own
  // when a key is being written is counted below).
  int64_t outer = 0;
  for (int i = 0; i < h.depth - (in_key ? 1 : 0); ++i) outer += FrameCost(frames_[i]);
  const auto& nodes = schema_->nodes;
  int64_t string_rest = 0;  // a string's rest, closing quote included
  switch (h.mode) {
    case Mode::kValue:
      return outer + nodes[h.node].min_len;
    case Mode::kArrayFirst:
    case Mode::kAfter:
      return outer;
    case Mode::kObjectFirst: {
      const Frame& f = frames_[h.depth - 1];
      const SchemaNode& n = nodes[f.node];
      if ((n.required & ~f.seen) == 0) return outer + 1;  // }
      return outer + FrameCost(f) - 1;                    // the first member has no ','
    }
    case Mode::kKey: {
      const Frame& f = frames_[h.depth - 1];
      const SchemaNode& n = nodes[f.node];
      if (!n.listed) return outer + 5;  // "":0}
      return outer + KeyCost(f, 0, 0, static_cast<uint16_t>(n.keys.size()));
    }
    case Mode::kKeyMatch:
      return outer + KeyCost(frames_[h.depth - 1], h.pos, h.lo, h.hi);
    case Mode::kColon:
      return outer + 1 + nodes[h.node].min_len;
    case Mode::kString:
      string_rest = h.utf8_left + 1;
      break;
    case Mode::kEscape:
      string_rest = 2;  // n"
      break;
    case Mode::kUnicode: {
      string_rest = h.hex_left + 1;
      // Digits that already make a high surrogate (D8-DB first) need the low one's escape too.
      const int read = 4 - h.hex_left;
      if (!h.low && read >= 2) {
        const int first_two = h.code >> (4 * (read - 2));
        if (first_two >= 0xD8 && first_two <= 0xDB) string_rest += 6;  // \uDC00
      }
      break;
    }
    case Mode::kLowBackslash:
      string_rest = 7;  // \uDC00"
      break;
    case Mode::kLowU:
      string_rest = 6;
      break;
    case Mode::kNumber:
      return outer +
             (h.num == Num::kMinus || h.num == Num::kDot || h.num == Num::kE || h.num == Num::kESign
                  ? 1
                  : 0);
    case Mode::kLiteral:
      return outer + static_cast<int64_t>(kLiterals[h.literal].size()) - h.literal_pos;
    case Mode::kEnum:
      return outer + ShortestEnum(nodes[h.node], h.lo, h.hi) - h.pos;
    case Mode::kDone:
      return 0;
  }
  // A free object's key: then ':', the shortest value (0) and '}'.
  return outer + string_rest + (h.key ? 3 : 0);
}

SchemaVocabulary::SchemaVocabulary(const Tokenizer& tokenizer, int64_t vocab,
                                   std::vector<int32_t> eos)
    : tokenizer_(tokenizer), vocab_(vocab), eos_(std::move(eos)) {
  // The tokens' bytes gathered in id order first (the tokenizer's strings lie all over the
  // heap), then sorted by their first 8 bytes as a big-endian number (shorter tokens padded
  // with zeros), ties by all bytes.
  std::string by_id;
  std::vector<int32_t> id;         // [T] the tokens, in id order
  std::vector<uint32_t> at = {0};  // [T + 1] token t's bytes: by_id[at[t], at[t + 1])
  struct Key {
    uint64_t key;
    uint32_t t;
  };
  std::vector<Key> keys;
  for (int64_t v = 0; v < vocab; ++v) {
    const int32_t i = static_cast<int32_t>(v);
    if (!tokenizer.IsValidId(i) || tokenizer.IsSpecial(i) || IsEos(i) ||
        tokenizer.TokenBytes(i).empty()) {
      others_.push_back(i);
      continue;
    }
    const std::string_view b = tokenizer.TokenBytes(i);
    uint64_t key = 0;
    for (size_t k = 0; k < 8; ++k) {
      key = key << 8 | (k < b.size() ? static_cast<uint8_t>(b[k]) : 0);
    }
    keys.push_back({key, static_cast<uint32_t>(id.size())});
    id.push_back(i);
    by_id += b;
    at.push_back(static_cast<uint32_t>(by_id.size()));
  }
  auto bytes = [&](uint32_t t) { return std::string_view(by_id).substr(at[t], at[t + 1] - at[t]); };
  // Radix sort on the key, 16 bits at a time from the last (stable), then the runs of equal keys
  // (tokens longer than 8 bytes that share their first 8) by their bytes.
  const size_t n = keys.size();
  {
    std::vector<Key> sorted(n);
    std::vector<uint32_t> count(65537);
    for (int shift = 0; shift < 64; shift += 16) {
      std::fill(count.begin(), count.end(), 0);
      for (const Key& k : keys) ++count[(k.key >> shift & 0xFFFF) + 1];
      if (std::find(count.begin() + 1, count.end(), n) != count.end()) continue;  // one bucket
      for (size_t b = 0; b < 65536; ++b) count[b + 1] += count[b];
      for (const Key& k : keys) sorted[count[k.key >> shift & 0xFFFF]++] = k;
      keys.swap(sorted);
    }
  }
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && keys[j].key == keys[i].key) ++j;
    if (j - i > 1) {
      std::sort(keys.begin() + static_cast<std::ptrdiff_t>(i),
                keys.begin() + static_cast<std::ptrdiff_t>(j),
                [&](const Key& a, const Key& b) { return bytes(a.t) < bytes(b.t); });
    }
    i = j;
  }
  ids_.resize(n);
  offset_.resize(n + 1);
  lcp_.assign(n, 0);
  plain_.assign(n, 0);
  bytes_.reserve(by_id.size());
  std::string_view previous;
  for (size_t i = 0; i < n; ++i) {
    const std::string_view b = bytes(keys[i].t);
    ids_[i] = id[keys[i].t];
    offset_[i] = static_cast<uint32_t>(bytes_.size());
    bytes_ += b;
    longest_ = std::max(longest_, b.size());
    size_t k = 0;
    while (k < previous.size() && k < b.size() && previous[k] == b[k]) ++k;
    lcp_[i] = static_cast<uint16_t>(std::min<size_t>(k, std::numeric_limits<uint16_t>::max()));
    previous = b;
    bool plain = true, ascii = true;
    for (const char c : b) {
      const uint8_t u = static_cast<uint8_t>(c);
      plain &= u >= 0x20 && u != '"' && u != '\\';
      ascii &= u < 0x80;
    }
    plain_[i] = plain && (ascii || FindInvalidUtf8(b) == std::string_view::npos);
  }
  offset_[n] = static_cast<uint32_t>(bytes_.size());
}

JsonSchemaMask::JsonSchemaMask(const Tokenizer& tokenizer, int64_t vocab, std::vector<int32_t> eos,
                               int64_t max_tokens, std::shared_ptr<const JsonSchema> schema)
    : JsonSchemaMask(std::make_shared<const SchemaVocabulary>(tokenizer, vocab, std::move(eos)),
                     max_tokens, std::move(schema)) {}

JsonSchemaMask::JsonSchemaMask(std::shared_ptr<const SchemaVocabulary> vocabulary,
                               int64_t max_tokens, std::shared_ptr<const JsonSchema> schema)
    : vocabulary_(std::move(vocabulary)),
      schema_(std::move(schema)),
      left_(max_tokens),
      budgeted_(false),
      state_(schema_.get()) {
  budgeted_ = max_tokens >= state_.ClosingBytes() + 1;
  stack_.assign(vocabulary_->longest_ + 1, state_);
}

void JsonSchemaMask::Apply(float* logits) {
  constexpr float kOff = -std::numeric_limits<float>::infinity();
  const SchemaVocabulary& voc = *vocabulary_;
  const bool complete = state_.complete();
  // After a token, finishing the value and EOS must fit in the tokens left (a byte is a token
  // at worst: the vocabulary has every single byte).
  auto fits = [&](const SchemaPrefix& s) {
    return !budgeted_ || s.ClosingBytes() + 1 <= left_ - 1;
  };
  bool any = false;
  for (const int32_t id : voc.others_) {
    if (complete && voc.IsEos(id)) {
      any = true;
    } else {
      logits[id] = kOff;
    }
  }
  if (state_.done()) {  // only EOS: the answer ends promptly
    for (const int32_t id : voc.ids_) logits[id] = kOff;
  } else {
    // Inside a free string, plain tokens keep the state: they all pass or fail the budget
    // together.
    any |= voc.Walk(
        state_, stack_, state_.between_string_characters(), fits(state_),
        [](SchemaPrefix& s, uint8_t c) { return s.Feed(c); }, fits, [](int32_t) { return false; },
        logits);
  }
  if (!any) {  // cannot happen with a byte-level vocabulary; end rather than emit garbage
    for (const int32_t e : voc.eos_) {
      if (e >= 0 && e < voc.vocab_) logits[e] = 0;
    }
  }
}

void JsonSchemaMask::Accept(int32_t token) {
  --left_;
  const SchemaVocabulary& voc = *vocabulary_;
  if (!voc.IsEos(token) && voc.tokenizer_.IsValidId(token)) {
    state_.Feed(voc.tokenizer_.TokenBytes(token));
  }
}

}  // namespace dsv3
