#include "model/kv_cache.h"

#include <cstring>

namespace dsv3 {

KvCache::KvCache(const Config& c, int64_t layers, int64_t slots, int64_t capacity)
    : layers_(layers), slots_(slots), capacity_(capacity), width_(c.kv_width()) {
  data_.Resize(static_cast<size_t>(layers_ * slots_ * capacity_ * width_), /*zero=*/false);
}

void KvCache::CopyPrefix(int64_t from, int64_t to, int64_t n) {
  if (from == to || n <= 0) return;
  for (int64_t l = 0; l < layers_; ++l) {
    std::memcpy(Row(l, to, 0), Row(l, from, 0), static_cast<size_t>(n * width_) * sizeof(float));
  }
}

}  // namespace dsv3
