// The latent KV cache of MLA: per layer and token only the normalized latent c_kv [C] and the
// rotated shared key k_pe [R], stored together as one row of C + R values. It is never expanded
// into per-head keys and values. A cache has one or more slots, one per sequence, each holding
// `capacity` positions.
//
// Rows are float32 (the default: attention then matches a float32 reference to rounding) or BF16
// (half the memory and half the bytes read per decoded token at long context; DeepSeek's own
// inference code keeps its cache in BF16). Writes round to nearest even.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "core/aligned.h"
#include "kernels/latent_attention.h"
#include "model/config.h"

namespace dsv3 {

enum class KvCacheType { kF32, kBF16 };
const char* KvCacheTypeName(KvCacheType t);  // "f32", "bf16"
std::optional<KvCacheType> KvCacheTypeFromName(std::string_view name);

class KvCache {
 public:
  KvCache(const Config& c, int64_t layers, int64_t slots, int64_t capacity,
          KvCacheType type = KvCacheType::kF32);

  KvCacheType type() const { return type_; }
  // Writes row [C + R] = [c_kv | k_pe] of `layer` for sequence `slot` at position `pos`.
  void Store(int64_t layer, int64_t slot, int64_t pos, const float* row);
  // Rows pos .. pos + n - 1 of one slot as float32 [n, C + R]: the cache itself for a float32
  // cache, else converted into `scratch` (n * (C + R) floats).
  const float* RowsF32(int64_t layer, int64_t slot, int64_t pos, int64_t n, float* scratch) const;
  // The stored rows of a BF16 cache, [capacity - pos, C + R] from `pos` on (consecutive).
  const uint16_t* RowsBF16(int64_t layer, int64_t slot, int64_t pos) const {
    return bf16_.data() + Offset(layer, slot, pos);
  }

  // Rows 0 .. n - 1 of one slot as stored, for kernels::LatentAttention.
  kernels::LatentRows Rows(int64_t layer, int64_t slot, int64_t n) const {
    if (type_ == KvCacheType::kBF16) return {DType::kBF16, RowsBF16(layer, slot, 0), n};
    return {DType::kF32, f32_.data() + Offset(layer, slot, 0), n};
  }

  int64_t capacity() const { return capacity_; }  // positions per slot
  int64_t slots() const { return slots_; }
  int64_t width() const { return width_; }  // C + R
  int64_t layers() const { return layers_; }
  // Bytes one token occupies over all layers: layers * (C + R) * element size.
  int64_t bytes_per_token() const { return layers_ * width_ * ElementSize(type_); }
  static int64_t ElementSize(KvCacheType t) { return t == KvCacheType::kBF16 ? 2 : 4; }
  int64_t element_size() const { return ElementSize(type_); }
  // The stored rows of one layer and slot from position 0 on, as bytes (moving a prefix between
  // processes).
  void* RawRows(int64_t layer, int64_t slot) {
    const int64_t at = Offset(layer, slot, 0);
    return type_ == KvCacheType::kBF16 ? static_cast<void*>(bf16_.data() + at)
                                       : static_cast<void*>(f32_.data() + at);
  }
  // Copies positions [0, n) of every layer from slot `from` to slot `to`.
  void CopyPrefix(int64_t from, int64_t to, int64_t n);

 private:
  int64_t Offset(int64_t layer, int64_t slot, int64_t pos) const {
    return ((layer * slots_ + slot) * capacity_ + pos) * width_;
  }
  KvCacheType type_;
  int64_t layers_, slots_, capacity_, width_;
  AlignedArray<float> f32_;      // [layers, slots, capacity, C + R] for kF32
  AlignedArray<uint16_t> bf16_;  // the same for kBF16
};

}  // namespace dsv3
