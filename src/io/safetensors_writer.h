// Safetensors writing, streamed tensor by tensor into a temporary file that is renamed into place
// when complete. Tensors are laid out by descending element size so each is aligned to it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv3 {

class Progress;

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  // Fills the tensor's bytes (numel * element size, row-major, little-endian) into dst.
  std::function<void(uint8_t* dst)> fill;

  uint64_t nbytes() const;
};

// Writes `tensors` to `path` (through `path + ".tmp"` and a rename). Returns the bytes written.
uint64_t WriteSafetensors(const std::string& path, std::vector<TensorToWrite> tensors,
                          const std::map<std::string, std::string>& metadata,
                          Progress* progress = nullptr);

}  // namespace dsv3
