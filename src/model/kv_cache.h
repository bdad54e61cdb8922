// The latent KV cache of MLA: per layer and token only the normalized latent c_kv [C] and the
// rotated shared key k_pe [R], stored together as one row of C + R floats. It is never expanded
// into per-head keys and values. A cache has one or more slots, one per sequence, each holding
// `capacity` positions.
#pragma once

#include <cstdint>

#include "core/aligned.h"
#include "model/config.h"

namespace dsv3 {

class KvCache {
 public:
  KvCache(const Config& c, int64_t layers, int64_t slots, int64_t capacity);

  // Row of `layer` for sequence `slot` at position `pos`: [C + R] = [c_kv | k_pe]. The rows of
  // one slot are consecutive.
  float* Row(int64_t layer, int64_t slot, int64_t pos) {
    return data_.data() + ((layer * slots_ + slot) * capacity_ + pos) * width_;
  }
  const float* Row(int64_t layer, int64_t slot, int64_t pos) const {
    return data_.data() + ((layer * slots_ + slot) * capacity_ + pos) * width_;
  }

  int64_t capacity() const { return capacity_; }  // positions per slot
  int64_t slots() const { return slots_; }
  int64_t width() const { return width_; }  // C + R
  int64_t layers() const { return layers_; }
  // Bytes one token occupies over all layers: layers * (C + R) * sizeof(float).
  int64_t bytes_per_token() const { return layers_ * width_ * static_cast<int64_t>(sizeof(float)); }
  // Copies positions [0, n) of every layer from slot `from` to slot `to`.
  void CopyPrefix(int64_t from, int64_t to, int64_t n);

 private:
  int64_t layers_, slots_, capacity_, width_;
  AlignedArray<float> data_;  // [layers, slots, capacity, C + R]
};

}  // namespace dsv3
