// Typed reads of JSON object fields (config.json and the like) with errors that name the source
// file and the field: missing required fields, wrong types and out-of-range values.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "core/error.h"
#include "core/json.h"

namespace dsv3 {

class FieldReader {
 public:
  FieldReader(const Json& json, std::string source) : json_(json), source_(std::move(source)) {}

  // The field, or nullptr when it is absent or null.
  const Json* Find(const char* field) const {
    const auto it = json_.find(field);
    return (it == json_.end() || it->is_null()) ? nullptr : &*it;
  }
  [[noreturn]] void Bad(const char* field, const char* expected) const {
    const Json* v = Find(field);
    Fail("{}: field '{}' must be {}, got {}", source_, field, expected, v ? v->dump() : "nothing");
  }
  // An integer in [min_value, max_value]; `fallback` when absent (nullopt: the field is required).
  int64_t Int(const char* field, std::optional<int64_t> fallback, int64_t min_value,
              int64_t max_value) const {
    const Json* v = Find(field);
    if (v == nullptr) {
      if (!fallback) Fail("{}: required field '{}' is missing", source_, field);
      return *fallback;
    }
    // Integral floats (e.g. 40.0) are accepted as integers, as Python would.
    if (v->is_number_float()) {
      const double d = v->get<double>();
      if (d != std::floor(d) || d < static_cast<double>(min_value) ||
          d > static_cast<double>(max_value)) {
        Bad(field, fmt::format("an integer in [{}, {}]", min_value, max_value).c_str());
      }
      return static_cast<int64_t>(d);
    }
    if (!v->is_number_integer()) Bad(field, "an integer");
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(max_value)) {
      Bad(field, fmt::format("an integer in [{}, {}]", min_value, max_value).c_str());
    }
    const int64_t i = v->get<int64_t>();
    if (i < min_value || i > max_value) {
      Bad(field, fmt::format("an integer in [{}, {}]", min_value, max_value).c_str());
    }
    return i;
  }
  double Number(const char* field, std::optional<double> fallback, double min_value,
                double max_value) const {
    const Json* v = Find(field);
    if (v == nullptr) {
      if (!fallback) Fail("{}: required field '{}' is missing", source_, field);
      return *fallback;
    }
    if (!v->is_number()) Bad(field, "a number");
    const double d = v->get<double>();
    if (!std::isfinite(d) || d < min_value || d > max_value) {
      Bad(field, fmt::format("a number in [{}, {}]", min_value, max_value).c_str());
    }
    return d;
  }
  bool Bool(const char* field, bool fallback) const {
    const Json* v = Find(field);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) Bad(field, "true or false");
    return v->get<bool>();
  }
  std::optional<std::string> String(const char* field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) Bad(field, "a string");
    return v->get<std::string>();
  }
  const std::string& source() const { return source_; }

 private:
  const Json& json_;
  std::string source_;
};

}  // namespace dsv3
