// JSON reading with limits for untrusted input (checkpoint headers, configs, requests):
// a size cap and a nesting-depth cap checked before the parser runs, and parse errors rethrown
// as dsv3::Error naming the source.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace dsv3 {

using Json = nlohmann::json;
// Keeps object keys in document order (chat messages and tool schemas are shown to templates in
// the order they were written).
using OrderedJson = nlohmann::ordered_json;

inline constexpr int kMaxJsonDepth = 64;

// `what` names the source in error messages (a file path, "request body", ...).
Json ParseJson(std::string_view text, const std::string& what, int max_depth = kMaxJsonDepth);
OrderedJson ParseOrderedJson(std::string_view text, const std::string& what,
                             int max_depth = kMaxJsonDepth);
// The whole file; an error naming it when it is larger than `max_bytes` or unreadable.
std::string ReadFileLimited(const std::string& path, size_t max_bytes);
Json ReadJsonFile(const std::string& path, size_t max_bytes, int max_depth = kMaxJsonDepth);

// Writes `text` to `path` through a temporary file in the same folder and a rename.
void WriteFileAtomic(const std::string& path, std::string_view text);

}  // namespace dsv3
