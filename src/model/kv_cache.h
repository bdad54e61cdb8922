// The latent KV cache of MLA: per layer and token only the normalized latent c_kv [C] and the
// rotated shared key k_pe [R], stored together as one row of C + R floats. It is never expanded
// into per-head keys and values.
#pragma once

#include <cstdint>

#include "core/aligned.h"
#include "model/config.h"

namespace dsv3 {

class KvCache {
 public:
  KvCache(const Config& c, int64_t layers, int64_t capacity);

  // Row of `layer` at token position `pos`: [C + R] = [c_kv | k_pe].
  float* Row(int64_t layer, int64_t pos) {
    return data_.data() + (layer * capacity_ + pos) * width_;
  }
  const float* Row(int64_t layer, int64_t pos) const {
    return data_.data() + (layer * capacity_ + pos) * width_;
  }

  int64_t capacity() const { return capacity_; }
  int64_t width() const { return width_; }  // C + R
  int64_t layers() const { return layers_; }
  // Bytes one token occupies over all layers: layers * (C + R) * sizeof(float).
  int64_t bytes_per_token() const { return layers_ * width_ * static_cast<int64_t>(sizeof(float)); }

 private:
  int64_t layers_, capacity_, width_;
  AlignedArray<float> data_;  // [layers, capacity, C + R]
};

}  // namespace dsv3
