#include "model/kv_cache.h"

namespace dsv3 {

KvCache::KvCache(const Config& c, int64_t layers, int64_t capacity)
    : layers_(layers), capacity_(capacity), width_(c.kv_width()) {
  data_.Resize(static_cast<size_t>(layers_ * capacity_ * width_), /*zero=*/false);
}

}  // namespace dsv3
