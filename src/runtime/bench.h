// End-to-end speed measurement of a model: prompt prefill, decode, the weight bytes a decoded token
// reads against the machine's measured memory read bandwidth, decode at a long context, and where
// the time goes.
#pragma once

#include <cstdint>
#include <vector>

#include "core/json.h"
#include "model/model.h"
#include "model/model_info.h"
#include "model/profile.h"
#include "runtime/generate.h"

namespace dsv3 {

struct BenchOptions {
  int64_t prompt_tokens = 512;
  int64_t decode_tokens = 128;
  int64_t context = 0;  // > 0: also decode after this many (random) cached tokens
  uint64_t seed = 0;
  int64_t draft = 0;  // > 0 and the model has MTP: a speculative run with this many drafts
  size_t bandwidth_bytes = size_t{1} << 30;  // STREAM buffer
  KvCacheType kv_cache = KvCacheType::kF32;
  kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32;
};

struct DecodeRun {
  int64_t context = 0;  // tokens in the cache when decoding started
  int64_t steps = 0;
  double seconds = 0;
  ForwardProfile profile;  // summed over the steps
  double tokens_per_second() const { return seconds > 0 ? steps / seconds : 0; }
  double attention_fraction() const {
    return seconds > 0 ? profile[Phase::kAttnCore] / seconds : 0;
  }
};

// Self-speculative decoding against plain decoding of the same prompt, and what bounds it: the
// time of one verification pass of k + 1 tokens and of one chained MTP draft, each relative to a
// one-token decode step at the same context. With random weights the acceptance is low; the
// measured costs give the speedup a trained model's acceptance would reach.
struct MtpBench {
  int64_t draft = 0;                   // 0: not run
  GenerateStats stats;                 // the speculative run (greedy, same prompt and length)
  double plain_tokens_per_second = 0;  // plain greedy decode in the same run
  double step_seconds = 0;             // mean one-token decode step
  std::vector<double> verify_cost;     // [j]: (j + 2)-token verification pass / step, j < draft
  double draft_cost = 0;               // one chained MTP draft / step
  double speedup() const {
    return plain_tokens_per_second > 0 ? stats.decode_tokens_per_second() / plain_tokens_per_second
                                       : 0;
  }
  // Tokens per second relative to plain decoding if every draft were accepted with probability
  // `acceptance`: (1 + a + ... + a^k) / (verify_cost(k + 1 tokens) + k * draft_cost).
  double ProjectedSpeedup(double acceptance, int64_t k) const;
};

struct BenchResult {
  int threads = 0;
  std::string kernels;
  std::string matmul;           // kernels::MatMulPrecision: "f32" or "bf16"
  std::string lm_head;          // the output projection's dtype as loaded ("BF16", "F8_E4M3", ...)
  double prefault_seconds = 0;  // paging the weights in before measuring
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  ForwardProfile prefill_profile;
  DecodeRun decode;       // right after the prompt
  DecodeRun long_decode;  // after options.context cached tokens (steps == 0 when not asked)
  uint64_t weight_bytes_per_token = 0;
  PhaseBytes phase_bytes{};  // the same by phase (WeightBytesPerPhase)
  double read_bandwidth_gbs = 0;
  int64_t kv_bytes_per_token = 0;
  std::string kv_cache;  // "f32" or "bf16"
  size_t scratch_bytes = 0;
  int64_t peak_rss_bytes = 0;
  MtpBench mtp;

  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
  }
  // Weight bytes per second the decode achieved, in GB/s.
  double effective_gbs() const { return weight_bytes_per_token * decode.tokens_per_second() / 1e9; }
  // GB/s phase p of a decode run read while it ran: its weight bytes per step, plus for
  // attn_core the latent cache rows each step attends to (the run's mean context), over the
  // phase's time per step.
  double PhaseGBs(const DecodeRun& run, Phase p) const;
  Json ToJson() const;
};

BenchResult RunBench(const Model& model, const BenchOptions& options);

}  // namespace dsv3
