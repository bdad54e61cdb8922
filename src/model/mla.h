// Multi-head latent attention over the latent KV cache.
#pragma once

#include <cstdint>

#include "core/aligned.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/profile.h"
#include "model/rope.h"
#include "model/trace.h"
#include "model/weights.h"

namespace dsv3 {

// kAbsorbed folds kv_b_proj into the query (W_uk) and the output (W_uv) so attention runs on the
// latent rows directly: the decode path. kExpanded rebuilds per-head keys and values from the
// latents (the textbook form); it exists to check the absorbed form and needs O(S) scratch per
// thread.
enum class AttentionImpl { kAbsorbed, kExpanded };

class Mla {
 public:
  Mla(const Config& c, const RopeTable& rope, int64_t max_batch, int64_t capacity,
      AttentionImpl impl);

  // Positions of the next Forward calls' tokens: start .. start + T - 1 (cos/sin computed once).
  void SetPositions(int64_t start, int64_t T);
  // out [T, D] = MLA(xn [T, D]); writes the tokens' rows of `layer` in the cache first.
  void Forward(const MlaWeights& w, int64_t layer, const float* xn, KvCache& cache, float* out,
               ForwardTrace* trace);
  void set_profile(ForwardProfile* profile) { profile_ = profile; }
  size_t scratch_bytes() const;

 private:
  void AttendAbsorbed(const MlaWeights& w, int64_t layer, const KvCache& cache);
  void AttendExpanded(const MlaWeights& w, int64_t layer, const KvCache& cache);

  const Config& c_;
  const RopeTable& rope_;
  const AttentionImpl impl_;
  ForwardProfile* profile_ = nullptr;
  const int64_t max_batch_, capacity_;
  int64_t start_ = 0, T_ = 0;
  AlignedArray<float> cos_, sin_;  // [B, R/2]
  AlignedArray<float> q_a_;        // [B, q_lora]
  AlignedArray<float> q_;          // [B, H, N+R]
  AlignedArray<float> kv_a_;       // [B, C+R]
  AlignedArray<float> heads_;      // [B, H*V]  attention output per head, o_proj input
  // Per-thread scratch: absorbed: q_lat [C+R], o_lat [C], scores [S];
  // expanded: + k_nope [S, N], values [S, V].
  int64_t thread_stride_ = 0, threads_ = 0;
  AlignedArray<float> thread_scratch_;
};

}  // namespace dsv3
