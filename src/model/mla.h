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
#include "model/trace.h"
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

  // The tokens of the following Forward calls: token t is at position positions[t] of cache slot
  // slots[t] (the arrays must outlive those calls). Consecutive tokens of one slot at consecutive
  // positions form a segment that attends as a block; cos/sin are computed here, once.
  void SetTokens(const int64_t* positions, const int32_t* slots, int64_t T);
  // out [T, D] = MLA(xn [T, D]); writes the tokens' rows of cache layer `layer` first. `name`
  // prefixes traced tensors ("layer0" -> "layer0.mla.q").
  void Forward(const MlaWeights& w, int64_t layer, const float* xn, KvCache& cache, float* out,
               ForwardTrace* trace, const std::string& name,
               kernels::MatMulPath path = kernels::MatMulPath::kAuto);
  void set_profile(ForwardProfile* profile) { profile_ = profile; }
  size_t scratch_bytes() const;

 private:
  struct Segment {
    int64_t first, count;  // tokens [first, first + count)
  };
  bool UseAbsorbed(const Segment& s) const;
  void AttendAbsorbed(const MlaWeights& w, int64_t layer, const KvCache& cache, int64_t t);
  void AttendExpanded(const MlaWeights& w, int64_t layer, const KvCache& cache, const Segment& s);

  const Config& c_;
  const RopeTable& rope_;
  const AttentionImpl impl_;
  const KvCacheType kv_;
  ForwardProfile* profile_ = nullptr;
  const int64_t max_batch_, capacity_;
  int64_t T_ = 0;
  const int64_t* positions_ = nullptr;
  const int32_t* slots_ = nullptr;
  std::vector<Segment> segments_;   // reserved for max_batch
  AlignedArray<float> cos_, sin_;   // [B, R/2]
  AlignedArray<float> q_a_;         // [B, q_lora]
  AlignedArray<float> q_;           // [B, H, N+R]
  AlignedArray<float> kv_a_;        // [B, C+R]
  AlignedArray<float> heads_;       // [B, H*V]  attention output per head, o_proj input
  AlignedArray<float> q_lat_;       // [H, C+R]  absorbed queries of one token
  AlignedArray<uint16_t> q_tiles_;  // q_lat_ prepared for the AMX kernel (BF16 cache)
  // Per-thread scratch (see Mla::Mla): a key block's scores, running softmax state and outputs,
  // and for a BF16 cache the block converted to float32 or the AMX kernel's scratch.
  int64_t thread_stride_ = 0, threads_ = 0, convert_offset_ = 0;
  AlignedArray<float> thread_scratch_;
};

}  // namespace dsv3
