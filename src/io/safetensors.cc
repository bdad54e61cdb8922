#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "core/json.h"

namespace dsv3 {
namespace fs = std::filesystem;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::ShapeString() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

uint64_t ReadU64Le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A JSON number that is a non-negative integer representable as int64, else an error.
int64_t NonNegativeInt(const Json& v, const std::string& path, const std::string& tensor,
                       const char* field) {
  const bool negative = v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0;
  if (!v.is_number_integer() || negative) {
    Fail("{}: tensor '{}': {} must hold non-negative integers, got {}", path, tensor, field,
         v.dump());
  }
  const uint64_t u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 2)) {
    Fail("{}: tensor '{}': {} value {} is too large", path, tensor, field, u);
  }
  return static_cast<int64_t>(u);
}

}  // namespace

SafetensorsHeader ParseSafetensors(std::span<const uint8_t> file, const std::string& path,
                                   size_t max_tensors) {
  const uint64_t file_size = file.size();
  if (file_size < 8) Fail("{}: {} bytes, too short for a safetensors header", path, file_size);
  const uint64_t header_len = ReadU64Le(file.data());
  if (header_len > kMaxSafetensorsHeaderBytes) {
    Fail("{}: header length {} exceeds the limit of {} bytes (corrupt or not a safetensors file)",
         path, header_len, kMaxSafetensorsHeaderBytes);
  }
  if (header_len > file_size - 8) {
    Fail("{}: header length {} runs past the end of the file ({} bytes); the file is truncated",
         path, header_len, file_size);
  }
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), header_len);
  const Json header = ParseJson(text, path + " (safetensors header)");
  if (!header.is_object()) Fail("{}: safetensors header is not a JSON object", path);
  if (header.size() > max_tensors) {
    Fail("{}: {} header entries exceed the limit of {}", path, header.size(), max_tensors);
  }
  const uint8_t* base = file.data() + 8 + header_len;
  SafetensorsHeader result;
  std::vector<TensorInfo>& tensors = result.tensors;
  const uint64_t data_size = file_size - 8 - header_len;

  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) Fail("{}: __metadata__ is not an object", path);
      for (const auto& [k, v] : entry.items()) {
        result.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
      }
      continue;
    }
    if (!entry.is_object()) Fail("{}: tensor '{}': header entry is not an object", path, name);
    const auto dtype_it = entry.find("dtype");
    const auto shape_it = entry.find("shape");
    const auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || shape_it == entry.end() || offsets_it == entry.end()) {
      Fail("{}: tensor '{}': header entry needs dtype, shape and data_offsets", path, name);
    }
    if (!dtype_it->is_string()) Fail("{}: tensor '{}': dtype is not a string", path, name);
    const auto dtype = DTypeFromName(dtype_it->get<std::string>());
    if (!dtype) {
      Fail(
          "{}: tensor '{}': unsupported dtype '{}' (supported: F32, BF16, F16, F8_E4M3, I32, "
          "I64, U8)",
          path, name, dtype_it->get<std::string>());
    }
    if (!shape_it->is_array() || shape_it->size() > kMaxTensorRank) {
      Fail("{}: tensor '{}': shape must be an array of at most {} dimensions", path, name,
           kMaxTensorRank);
    }
    if (!offsets_it->is_array() || offsets_it->size() != 2) {
      Fail("{}: tensor '{}': data_offsets must be [begin, end]", path, name);
    }
    TensorInfo t;
    t.name = name;
    t.dtype = *dtype;
    uint64_t numel = 1;
    for (const Json& d : *shape_it) {
      const auto dim = static_cast<uint64_t>(NonNegativeInt(d, path, name, "shape"));
      if (dim != 0 && numel > (1ull << 62) / dim)
        Fail("{}: tensor '{}': shape too large", path, name);
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto begin =
        static_cast<uint64_t>(NonNegativeInt((*offsets_it)[0], path, name, "data_offsets"));
    const auto end =
        static_cast<uint64_t>(NonNegativeInt((*offsets_it)[1], path, name, "data_offsets"));
    if (begin > end)
      Fail("{}: tensor '{}': data_offsets [{}, {}] are reversed", path, name, begin, end);
    if (end > data_size) {
      Fail(
          "{}: tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes); the "
          "file "
          "is truncated or the header is wrong",
          path, name, begin, end, data_size);
    }
    const uint64_t expected = numel * DTypeSize(t.dtype);
    if (end - begin != expected) {
      Fail("{}: tensor '{}': {} bytes in data_offsets but dtype {} and shape {} need {}", path,
           name, end - begin, DTypeName(t.dtype), t.ShapeString(), expected);
    }
    t.data = base + begin;
    t.nbytes = end - begin;
    ranges.push_back({begin, end, tensors.size()});
    tensors.push_back(std::move(t));
  }

  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  const Range* prev = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;
    if (prev != nullptr && r.begin < prev->end) {
      Fail("{}: tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", path, tensors[prev->index].name,
           prev->begin, prev->end, tensors[r.index].name, r.begin, r.end);
    }
    prev = &r;
  }

  return result;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(path) {
  SafetensorsHeader header = ParseSafetensors({map_.data(), map_.size()}, path);
  tensors_ = std::move(header.tensors);
  metadata_ = std::move(header.metadata);
  // Keep the header's order (by offset) and give misaligned tensors an aligned copy.
  std::sort(tensors_.begin(), tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.data < b.data; });
  for (TensorInfo& t : tensors_) {
    t.file = &map_.path();
    const size_t align = DTypeSize(t.dtype);
    if (reinterpret_cast<uintptr_t>(t.data) % align != 0) {
      auto copy = std::make_unique<uint8_t[]>(t.nbytes + 64);
      uint8_t* aligned = copy.get() + (64 - reinterpret_cast<uintptr_t>(copy.get()) % 64) % 64;
      std::memcpy(aligned, t.data, t.nbytes);
      t.data = aligned;
      aligned_copies_.push_back(std::move(copy));
    }
  }
}

SafetensorsIndex ParseSafetensorsIndex(std::string_view text, const std::string& path,
                                       size_t max_tensors) {
  if (text.size() > kMaxIndexBytes) {
    Fail("{}: {} bytes, more than the limit of {} bytes for an index", path, text.size(),
         kMaxIndexBytes);
  }
  const Json index = ParseJson(text, path);
  if (!index.is_object()) Fail("{}: expected a JSON object", path);
  const auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) Fail("{}: missing 'weight_map' object", path);
  if (map_it->size() > max_tensors) {
    Fail("{}: weight_map has {} entries, more than the limit of {}", path, map_it->size(),
         max_tensors);
  }
  SafetensorsIndex result;
  for (const auto& [tensor, file] : map_it->items()) {
    if (!file.is_string()) Fail("{}: weight_map['{}'] is not a string", path, tensor);
    const std::string f = file.get<std::string>();
    const bool control = std::any_of(f.begin(), f.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
    });
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos ||
        control || f == "." || f == "..") {
      // Quoted as JSON: the name may hold control characters (a NUL would cut the message).
      Fail("{}: weight_map[{}] = {} is not a file name in the model folder", path,
           Json(tensor).dump(), Json(f).dump());
    }
    result.weight_map.emplace_back(tensor, f);
    result.shards.push_back(f);
  }
  std::sort(result.shards.begin(), result.shards.end());
  result.shards.erase(std::unique(result.shards.begin(), result.shards.end()), result.shards.end());
  return result;
}

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) Fail("{}: not a directory (expected a model folder)", dir);
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    const std::string text = ReadFileLimited(index_path.string(), kMaxIndexBytes);
    const SafetensorsIndex index = ParseSafetensorsIndex(text, index_path.string());
    for (const std::string& f : index.shards) {
      const fs::path p = fs::path(dir) / f;
      if (!fs::exists(p)) {
        Fail("{}: shard '{}' listed in model.safetensors.index.json is missing", p.string(), f);
      }
      AddFile(p.string());
    }
    for (const auto& [tensor, f] : index.weight_map) {
      const TensorInfo* t = Find(tensor);
      if (t == nullptr || fs::path(*t->file).filename() != f) {
        Fail("{}: tensor '{}' is listed in model.safetensors.index.json but not stored there",
             (fs::path(dir) / f).string(), tensor);
      }
    }
  } else if (fs::exists(fs::path(dir) / "model.safetensors")) {
    AddFile((fs::path(dir) / "model.safetensors").string());
  } else {
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".safetensors") found.push_back(e.path().string());
    }
    if (found.empty()) {
      Fail("{}: no model.safetensors or model.safetensors.index.json in the model folder", dir);
    }
    if (found.size() > 1) {
      Fail("{}: {} .safetensors files but no model.safetensors.index.json to say which holds what",
           dir, found.size());
    }
    AddFile(found[0]);
  }
}

void Checkpoint::AddFile(const std::string& path) {
  files_.push_back(std::make_unique<SafetensorsFile>(path));
  for (const TensorInfo& t : files_.back()->tensors()) {
    const auto [it, inserted] = by_name_.emplace(t.name, &t);
    if (!inserted) {
      Fail("{}: tensor '{}' is also stored in {}", path, t.name, *it->second->file);
    }
    ordered_.push_back(&t);
  }
}

const TensorInfo* Checkpoint::Find(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : it->second;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const TensorInfo* t : ordered_) total += t->nbytes;
  return total;
}

}  // namespace dsv3
