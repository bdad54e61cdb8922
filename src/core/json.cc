#include "core/json.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsv3 {
namespace {

// Deepest nesting of [ and { outside strings. Runs before parsing so a hostile document cannot
// drive the recursive parser into a stack overflow.
int NestingDepth(std::string_view text) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{')
      max_depth = std::max(max_depth, ++depth);
    else if (c == ']' || c == '}')
      --depth;
  }
  return max_depth;
}

template <typename J>
J ParseLimited(std::string_view text, const std::string& what, int max_depth) {
  if (NestingDepth(text) > max_depth) {
    Fail("{}: JSON nested deeper than {} levels", what, max_depth);
  }
  try {
    return J::parse(text.begin(), text.end());
  } catch (const typename J::exception& e) {
    Fail("{}: invalid JSON: {}", what, e.what());
  }
}

}  // namespace

Json ParseJson(std::string_view text, const std::string& what, int max_depth) {
  return ParseLimited<Json>(text, what, max_depth);
}

OrderedJson ParseOrderedJson(std::string_view text, const std::string& what, int max_depth) {
  return ParseLimited<OrderedJson>(text, what, max_depth);
}

std::string ReadFileLimited(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("{}: cannot open", path);
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) Fail("{}: cannot read", path);
  if (static_cast<size_t>(size) > max_bytes) {
    Fail("{}: {} bytes, more than the limit of {} bytes for this file", path, size, max_bytes);
  }
  in.seekg(0);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in.read(text.data(), size)) Fail("{}: read failed", path);
  return text;
}

Json ReadJsonFile(const std::string& path, size_t max_bytes, int max_depth) {
  return ParseJson(ReadFileLimited(path, max_bytes), path, max_depth);
}

void WriteFileAtomic(const std::string& path, std::string_view text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) Fail("{}: cannot create", tmp);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) Fail("{}: write failed", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) Fail("{}: cannot rename to {}", tmp, path);
}

}  // namespace dsv3
