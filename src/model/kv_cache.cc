#include "model/kv_cache.h"

#include <cstring>

#include "core/dtype.h"
#include "kernels/ops.h"

namespace dsv3 {

const char* KvCacheTypeName(KvCacheType t) { return t == KvCacheType::kBF16 ? "bf16" : "f32"; }

std::optional<KvCacheType> KvCacheTypeFromName(std::string_view name) {
  if (name == "f32") return KvCacheType::kF32;
  if (name == "bf16") return KvCacheType::kBF16;
  return std::nullopt;
}

KvCache::KvCache(const Config& c, int64_t layers, int64_t slots, int64_t capacity, KvCacheType type)
    : type_(type), layers_(layers), slots_(slots), capacity_(capacity), width_(c.kv_width()) {
  const size_t n = static_cast<size_t>(layers_ * slots_ * capacity_ * width_);
  if (type_ == KvCacheType::kBF16) {
    bf16_.Resize(n, /*zero=*/false);
  } else {
    f32_.Resize(n, /*zero=*/false);
  }
}

void KvCache::Store(int64_t layer, int64_t slot, int64_t pos, const float* row) {
  const int64_t at = Offset(layer, slot, pos);
  if (type_ == KvCacheType::kBF16) {
    for (int64_t i = 0; i < width_; ++i) bf16_.data()[at + i] = F32ToBF16(row[i]);
  } else {
    std::memcpy(f32_.data() + at, row, static_cast<size_t>(width_) * sizeof(float));
  }
}

const float* KvCache::RowsF32(int64_t layer, int64_t slot, int64_t pos, int64_t n,
                              float* scratch) const {
  const int64_t at = Offset(layer, slot, pos);
  if (type_ == KvCacheType::kF32) return f32_.data() + at;
  kernels::BF16ToF32(bf16_.data() + at, n * width_, scratch);
  return scratch;
}

void KvCache::CopyPrefix(int64_t from, int64_t to, int64_t n) {
  if (from == to || n <= 0) return;
  const size_t bytes = static_cast<size_t>(n * width_ * ElementSize(type_));
  auto copy = [&](auto* data) {
    for (int64_t l = 0; l < layers_; ++l)
      std::memcpy(data + Offset(l, to, 0), data + Offset(l, from, 0), bytes);
  };
  if (type_ == KvCacheType::kBF16) {
    copy(bf16_.data());
  } else {
    copy(f32_.data());
  }
}

}  // namespace dsv3
