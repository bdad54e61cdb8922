// Safetensors reading: one memory-mapped file, or a sharded checkpoint folder through
// model.safetensors.index.json. Headers are validated completely (dtype, shape, offsets inside the
// file, sizes matching shapes, no overlaps) before any tensor byte is touched.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace dsv3 {

// Limits on untrusted headers.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;
inline constexpr size_t kMaxTensorsPerFile = 1u << 20;
inline constexpr size_t kMaxTensorRank = 8;
inline constexpr size_t kMaxIndexBytes = 64u << 20;        // model.safetensors.index.json
inline constexpr size_t kMaxCheckpointTensors = 1u << 22;  // weight_map entries

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // element-aligned; inside the mapping or an aligned copy
  uint64_t nbytes = 0;
  const std::string* file = nullptr;  // the file it lives in

  int64_t numel() const;
  std::string ShapeString() const;  // "[96, 256]"
};

// The header of a safetensors file held in memory (`file` is the whole file), validated as
// SafetensorsFile does; tensor data pointers point into `file` and may be misaligned. `path` names
// the file in errors. Used by SafetensorsFile and by the fuzz target.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in header order
  std::map<std::string, std::string> metadata;
};
SafetensorsHeader ParseSafetensors(std::span<const uint8_t> file, const std::string& path,
                                   size_t max_tensors = kMaxTensorsPerFile);

// model.safetensors.index.json: which shard holds each tensor. `text` is the file's content.
struct SafetensorsIndex {
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> shard, file order
  std::vector<std::string> shards;                              // sorted, unique
};
SafetensorsIndex ParseSafetensorsIndex(std::string_view text, const std::string& path,
                                       size_t max_tensors = kMaxCheckpointTensors);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws dsv3::Error naming the file
  const std::string& path() const { return map_.path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const MappedFile& mapping() const { return map_; }

 private:
  MappedFile map_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint8_t[]>> aligned_copies_;  // for tensors stored misaligned
};

// All tensors of a model folder.
class Checkpoint {
 public:
  // `dir` holds model.safetensors.index.json + shards, or model.safetensors, or one *.safetensors.
  explicit Checkpoint(const std::string& dir);

  const TensorInfo* Find(std::string_view name) const;
  const std::vector<const TensorInfo*>& tensors() const { return ordered_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  uint64_t total_bytes() const;
  const std::string& dir() const { return dir_; }

 private:
  void AddFile(const std::string& path);
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, const TensorInfo*> by_name_;
  std::vector<const TensorInfo*> ordered_;
};

}  // namespace dsv3
