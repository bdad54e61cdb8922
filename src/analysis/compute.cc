#include "analysis/compute.h"

#include <algorithm>

#include "analysis/presets.h"
#include "core/error.h"

namespace dsv3::analysis {

TrainingFlops TrainingFlopsPerToken(const Arch& a, int64_t seq_len) {
  if (seq_len < 1) Fail("--seq-len must be at least 1, got {}", seq_len);
  TrainingFlops f;
  f.seq_len = seq_len;
  const double s = static_cast<double>(seq_len);
  // Causal attention: position i attends to i positions, seq_len / 2 on average. With a sliding
  // window w < seq_len the positions past w attend to w each.
  const double w = static_cast<double>(a.sliding_window);
  f.attended = (a.sliding_window == 0 || w >= s) ? s / 2 : (w * w / 2 + (s - w) * w) / s;
  f.weights = 6.0 * static_cast<double>(a.params.activated);
  // Per layer and head, the scores (q . k over qk_head_dim) and the weighted sum of values
  // (v_head_dim) each take 2 FLOPs per element forward and 4 backward.
  f.attention =
      6.0 * static_cast<double>(a.layers * a.heads * (a.qk_head_dim + a.v_head_dim)) * f.attended;
  f.total = f.weights + f.attention;
  const double d = static_cast<double>(a.hidden);
  f.paper_dense_approximation =
      72.0 * static_cast<double>(a.layers) * d * d + 6.0 * static_cast<double>(a.vocab) * d;
  return f;
}

DecodeFlops DecodeFlopsPerToken(const Arch& a, int64_t context) {
  if (context < 1) Fail("--context must be at least 1, got {}", context);
  DecodeFlops f;
  f.context = context;
  f.attended = KvCachedTokens(a, context);
  const double n = static_cast<double>(f.attended);
  f.weights = 2.0 * static_cast<double>(a.params.activated);
  f.attention = 2.0 * static_cast<double>(a.layers * a.heads * (a.qk_head_dim + a.v_head_dim)) * n;
  f.total = f.weights + f.attention;
  f.attention_absorbed = f.attention;
  if (a.attention == AttentionKind::kMla) {
    // Absorbed MLA: the per-head up-projections act on the query and on the output (they are
    // weights, counted in N_activated once), the attention itself runs in the latent space.
    f.attention_absorbed =
        2.0 * static_cast<double>(a.layers * a.heads * (2 * a.kv_lora_rank + a.qk_rope_head_dim)) *
        n;
  }
  f.total_absorbed = f.weights + f.attention_absorbed;
  return f;
}

const std::vector<Machine>& MachinePresets() {
  // Vendor datasheet peaks; dense (not 2:4 sparse) BF16 tensor rates.
  static const std::vector<Machine> presets = {
      {"h800", 3350, 989.5, "NVIDIA H800 SXM5: 3.35 TB/s HBM3, 989.5 TFLOPS BF16"},
      {"h100", 3350, 989.5, "NVIDIA H100 SXM5: 3.35 TB/s HBM3, 989.5 TFLOPS BF16"},
      {"h200", 4800, 989.5, "NVIDIA H200 SXM: 4.8 TB/s HBM3e, 989.5 TFLOPS BF16"},
      {"mi300x", 5300, 1307.4, "AMD Instinct MI300X: 5.3 TB/s HBM3, 1307.4 TFLOPS BF16"},
      {"rtx4090", 1008, 165.2,
       "NVIDIA GeForce RTX 4090: 1008 GB/s GDDR6X, 165.2 TFLOPS BF16 (FP32 accumulate)"},
      {"ddr5-4800x12", 460.8, 0,
       "one CPU socket with 12 channels of DDR5-4800: 460.8 GB/s, no FLOP rate (give --tflops)"},
  };
  return presets;
}

Machine FindMachine(const std::string& name) {
  return FindPreset(MachinePresets(), name, "--machine", "machine",
                    "or give --bandwidth-gbs and --tflops");
}

DecodeBound DecodeBoundFor(const Arch& a, const Machine& m, WeightFormat weights,
                           int64_t group_size, int64_t kv_bytes_per_value, int64_t context) {
  if (!(m.bandwidth_gbs > 0)) Fail("--bandwidth-gbs must be positive, got {}", m.bandwidth_gbs);
  if (m.tflops < 0) Fail("--tflops must be positive, got {}", m.tflops);
  DecodeBound b;
  b.machine = m;
  b.weights = weights;
  b.kv_bytes_per_value = kv_bytes_per_value;
  b.context = context;
  b.weight_bytes = CountWeightBytes(a, weights, group_size).per_token;
  b.kv_bytes = KvCacheBytes(a, kv_bytes_per_value, context, 1);
  b.bytes = b.weight_bytes + b.kv_bytes;
  // Decoding one sequence reads every activated weight and the whole cache once per token.
  b.memory_tokens_per_s = m.bandwidth_gbs * 1e9 / static_cast<double>(b.bytes);
  b.flops = DecodeFlopsPerToken(a, context).total_absorbed;
  b.tokens_per_s = b.memory_tokens_per_s;
  if (m.tflops > 0) {
    b.compute_tokens_per_s = m.tflops * 1e12 / b.flops;
    if (b.compute_tokens_per_s < b.memory_tokens_per_s) {
      b.tokens_per_s = b.compute_tokens_per_s;
      b.bound_by = "compute";
    }
  }
  return b;
}

}  // namespace dsv3::analysis
