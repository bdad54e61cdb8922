#include "runtime/bench.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/stream.h"
#include "kernels/targets.h"
#include "model/model_info.h"
#include "runtime/sampler.h"

namespace dsv3 {
namespace {

using Clock = std::chrono::steady_clock;

// Linux: writing 5 to /proc/self/clear_refs resets the VmHWM peak-RSS mark.
void ResetPeakRss() {
  if (std::FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
}

int64_t PeakRssBytes() {
  int64_t kb = -1;
  if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof(line), f)) {
      if (std::sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
    }
    std::fclose(f);
  }
  if (kb < 0) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    kb = usage.ru_maxrss;
  }
  return kb * 1024;
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Greedy decode of `steps` tokens after whatever `ctx` holds, starting from `token`.
DecodeRun Decode(Context& ctx, int32_t token, int64_t steps) {
  DecodeRun run;
  run.context = ctx.n_past();
  ctx.set_profile(&run.profile);
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < steps; ++i) {
    ctx.Forward(std::span<const int32_t>(&token, 1));
    token = Argmax(ctx.last_logits(), ctx.model().config().vocab_size);
  }
  run.seconds = Since(t0);
  run.steps = steps;
  ctx.set_profile(nullptr);
  return run;
}

Json ProfileJson(const ForwardProfile& p, double total) {
  Json j;
  for (int i = 0; i < static_cast<int>(Phase::kCount); ++i) {
    j[ForwardProfile::Name(static_cast<Phase>(i))] = total > 0 ? p.seconds[i] / total : 0.0;
  }
  j["other"] = total > 0 ? (total - p.Total()) / total : 0.0;
  return j;
}

Json DecodeJson(const DecodeRun& r) {
  return {{"context", r.context},
          {"tokens", r.steps},
          {"seconds", r.seconds},
          {"tokens_per_second", r.tokens_per_second()},
          {"attention_fraction", r.attention_fraction()},
          {"phase_fractions", ProfileJson(r.profile, r.seconds)}};
}

}  // namespace

Json BenchResult::ToJson() const {
  Json j = {
      {"threads", threads},
      {"kernels", kernels},
      {"prefault_seconds", prefault_seconds},
      {"prefill",
       {{"tokens", prompt_tokens},
        {"seconds", prefill_seconds},
        {"tokens_per_second", prefill_tokens_per_second()},
        {"phase_fractions", ProfileJson(prefill_profile, prefill_seconds)}}},
      {"decode", DecodeJson(decode)},
      {"prefill_over_decode", decode.tokens_per_second() > 0
                                  ? prefill_tokens_per_second() / decode.tokens_per_second()
                                  : 0.0},
      {"weight_bytes_per_token", weight_bytes_per_token},
      {"effective_gbs", effective_gbs()},
      {"memory_read_gbs", read_bandwidth_gbs},
      {"bandwidth_ratio", read_bandwidth_gbs > 0 ? effective_gbs() / read_bandwidth_gbs : 0.0},
      {"kv_bytes_per_token", kv_bytes_per_token},
      {"scratch_bytes", scratch_bytes},
      {"peak_rss_bytes", peak_rss_bytes}};
  if (long_decode.steps > 0) j["long_context_decode"] = DecodeJson(long_decode);
  return j;
}

BenchResult RunBench(const Model& model, const BenchOptions& o) {
  const Config& c = model.config();
  if (o.prompt_tokens < 1 || o.decode_tokens < 1) Fail("bench needs -p >= 1 and -n >= 1");
  BenchResult r;
  r.threads = NumThreads();
  r.kernels = kernels::ActiveTarget();
  r.prompt_tokens = o.prompt_tokens;
  r.weight_bytes_per_token = WeightBytesPerToken(c, model.weights());
  r.kv_bytes_per_token = KvBytesPerToken(c, 4);

  // Page in every weight first: the first tokens of a fresh mapping pay page faults that are not
  // decode speed.
  {
    const auto t0 = Clock::now();
    for (const auto& f : model.checkpoint().files()) f->mapping().Prefault();
    r.prefault_seconds = Since(t0);
  }
  // Memory bandwidth first, in the same process and with the same threads as the decode; then
  // the peak-RSS mark is reset so the bandwidth buffer does not count.
  r.read_bandwidth_gbs = kernels::MeasureReadBandwidthGBs(o.bandwidth_bytes, 5);
  ResetPeakRss();

  std::mt19937_64 rng(o.seed);
  std::vector<int32_t> prompt(static_cast<size_t>(o.prompt_tokens));
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(c.vocab_size));
  {
    const int64_t capacity = o.prompt_tokens + o.decode_tokens;
    if (capacity > c.max_position_embeddings) {
      Fail("-p + -n = {} exceeds max_position_embeddings ({})", capacity,
           c.max_position_embeddings);
    }
    Context ctx(model, {capacity, o.prompt_tokens, AttentionImpl::kAuto});
    r.scratch_bytes = ctx.scratch_bytes();
    ctx.set_profile(&r.prefill_profile);
    const auto t0 = Clock::now();
    ctx.Forward(prompt);
    r.prefill_seconds = Since(t0);
    ctx.set_profile(nullptr);
    r.decode = Decode(ctx, Argmax(ctx.last_logits(), c.vocab_size), o.decode_tokens);
  }
  if (o.context > 0) {
    const int64_t capacity = o.context + o.decode_tokens;
    if (capacity > c.max_position_embeddings) {
      Fail("--context + -n = {} exceeds max_position_embeddings ({})", capacity,
           c.max_position_embeddings);
    }
    Context ctx(model, {capacity, 1, AttentionImpl::kAuto});
    ctx.FillRandomHistory(o.context, o.seed);
    r.long_decode = Decode(ctx, prompt[0], o.decode_tokens);
  }
  r.peak_rss_bytes = PeakRssBytes();
  return r;
}

}  // namespace dsv3
