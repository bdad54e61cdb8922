// Optional observation of a forward pass: routing decisions and named intermediate tensors, for
// tests and debugging. A null trace costs nothing in the forward pass.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dsv3 {

struct ForwardTrace {
  struct Routing {
    int64_t layer = 0;
    std::vector<int32_t> indices;  // [T, K], descending choice score
    std::vector<float> weights;    // [T, K], including routed_scaling_factor
  };
  // One entry per MoE layer in layer order; tokens of later calls are appended.
  std::vector<Routing> routing;
  // Called with names like "embed", "layer0.mla.q", "layer2.ffn_out", "final_hidden_post_norm":
  // data [rows, cols] with rows `stride` floats apart.
  std::function<void(const std::string& name, const float* data, int64_t rows, int64_t cols,
                     int64_t stride)>
      tensor;

  void Emit(const std::string& name, const float* data, int64_t rows, int64_t cols,
            int64_t stride) const {
    if (tensor) tensor(name, data, rows, cols, stride);
  }
  Routing& RoutingFor(int64_t layer) {
    for (Routing& r : routing) {
      if (r.layer == layer) return r;
    }
    routing.push_back({layer, {}, {}});
    return routing.back();
  }
};

}  // namespace dsv3
