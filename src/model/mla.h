// Multi-head latent attention over the latent KV cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/profile.h"
#include "model/rope.h"
#include "model/step.h"
#include "model/weights.h"

namespace dsv3 {

// kAbsorbed folds kv_b_proj into the query (W_uk) and the output (W_uv) so attention runs on the
// latent rows directly, all heads sharing each cached row: the decode path, cheapest when few
// tokens attend to a long cache. kExpanded rebuilds per-head keys and values from the latents,
// one block of cached tokens at a time (the textbook form): cheaper when many tokens attend, as in
// prompt prefill. kAuto picks per step by operation count.
enum class AttentionImpl { kAuto, kAbsorbed, kExpanded };

class Mla {
 public:
  // kv: the type of the caches later passed to Forward (sizes the scratch).
  Mla(const Config& c, const RopeTable& rope, int64_t max_batch, int64_t capacity,
      AttentionImpl impl, KvCacheType kv);

  // out [T, D] = MLA(xn [T, D]) for the step's tokens; writes their rows of cache layer `layer`
  // first. `name` prefixes traced tensors ("layer0" -> "layer0.mla.q").
  void Forward(const ForwardStep& step, const MlaWeights& w, int64_t layer, const float* xn,
               KvCache& cache, float* out, const std::string& name);
  void set_profile(ForwardProfile* profile) { profile_ = profile; }
  size_t scratch_bytes() const;

 private:
  bool UseAbsorbed(const ForwardStep& step, const StepSegment& s) const;
  void AttendAbsorbed(const ForwardStep& step, const MlaWeights& w, int64_t layer,
                      const KvCache& cache, int64_t t);
  void AttendExpanded(const ForwardStep& step, const MlaWeights& w, int64_t layer,
                      const KvCache& cache, const StepSegment& s);
  void EnsureThreadScratch();

  const Config& c_;
  const RopeTable& rope_;
  const AttentionImpl impl_;
  const KvCacheType kv_;
  ForwardProfile* profile_ = nullptr;
  const int64_t max_batch_, capacity_;
  AlignedArray<float> q_a_;    // [B, q_lora]
  AlignedArray<float> q_;      // [B, H, N+R]
  AlignedArray<float> kv_a_;   // [B, C+R]
  AlignedArray<float> heads_;  // [B, H*V]  attention output per head, o_proj input
  AlignedArray<float> q_lat_;  // [H, C+R]  absorbed queries of one token
  AlignedArray<float> o_lat_;  // [H, C]    their attention over the cached latents
  // Per-thread scratch of the expanded form (a key block's keys, values, scores, running softmax
  // state and outputs, and a BF16 block converted to float32), and the absorbed form's
  // kernels::LatentAttention scratch: one buffer, sized for the larger.
  int64_t thread_stride_ = 0, convert_offset_ = 0, threads_ = 0;
  AlignedArray<float> scratch_;
};

}  // namespace dsv3
