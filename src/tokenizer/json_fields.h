// Small readers for fields of tokenizer.json and tokenizer_config.json, with errors that name
// the field.
#pragma once

#include <string>

#include "core/error.h"
#include "core/json.h"

namespace dsv3 {

// The "type" of a tokenizer.json component ("" when absent).
inline std::string ComponentType(const Json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>()
                                                                      : "";
}

// An optional boolean field: `fallback` when absent or null, an error when not a boolean.
inline bool OptionalBool(const Json& j, const char* key, bool fallback, const std::string& what) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) Fail("{}.{}: expected true or false", what, key);
  return j[key].get<bool>();
}

}  // namespace dsv3
