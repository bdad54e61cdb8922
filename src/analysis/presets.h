// Lookup of named presets (machines, interconnects) with an error that lists the known names.
#pragma once

#include <string>
#include <vector>

#include "core/error.h"

namespace dsv3::analysis {

// The preset called `name`; otherwise fails with "<option> '<name>' is not a known <kind>
// (known: a, b, c; <alternative>)". T needs a `name` member.
template <typename T>
const T& FindPreset(const std::vector<T>& presets, const std::string& name, const char* option,
                    const char* kind, const char* alternative) {
  std::string names;
  for (const T& p : presets) {
    if (p.name == name) return p;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  Fail("{} '{}' is not a known {} (known: {}; {})", option, name, kind, names, alternative);
}

}  // namespace dsv3::analysis
