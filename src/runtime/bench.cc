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
#include "model/mtp.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"

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

// Reads one byte per page of every weight matrix `model` binds (a process group's rank binds
// only its own routed experts).
void PrefaultHeld(const Model& model) {
  volatile uint8_t sink = 0;
  auto touch = [&](const kernels::WeightMatrix& w) {
    if (w.data == nullptr) return;
    const uint8_t* p = static_cast<const uint8_t*>(w.data);
    const size_t n = static_cast<size_t>(w.rows * w.cols) * DTypeSize(w.dtype);
    for (size_t i = 0; i < n; i += 4096) sink = sink + p[i];
  };
  auto mlp = [&](const MlpWeights& m) { touch(m.gate), touch(m.up), touch(m.down); };
  auto layer = [&](const LayerWeights& l) {
    for (const WeightMatrix* w : {&l.attn.q_a, &l.attn.q_b, &l.attn.q, &l.attn.kv_a, &l.attn.kv_b,
                                  &l.attn.o, &l.moe.router})
      touch(*w);
    mlp(l.mlp);
    mlp(l.moe.shared);
    for (const MlpWeights& e : l.moe.experts) mlp(e);
  };
  const Weights& w = model.weights();
  touch(w.embed);
  touch(w.lm_head);
  for (const LayerWeights& l : w.layers) layer(l);
  for (const MtpWeights& m : model.mtp()) {
    touch(m.embed), touch(m.eh_proj), touch(m.head);
    layer(m.layer);
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

// Mean seconds of one pass over `tokens` (logits and hidden states of every row, as a
// verification pass computes them) at the context `ctx` holds, restored after each pass. The
// tokens start at a different offset of `pool` each time, so MoE routing varies.
double TimePass(Context& ctx, std::span<const int32_t> pool, int64_t m, int reps) {
  const Config& c = ctx.model().config();
  AlignedArray<float> logits(m * c.vocab_size), hidden(m * c.hidden_size);
  const int64_t n = ctx.n_past();
  double seconds = 0;
  for (int i = 0; i <= reps; ++i) {  // pass 0 warms up
    const auto tokens = pool.subspan((static_cast<size_t>(i) * 7) % (pool.size() - m + 1), m);
    const auto t0 = Clock::now();
    ctx.Forward(tokens, {.logits = std::span<float>(logits.data(), logits.size()),
                         .hidden = std::span<float>(hidden.data(), hidden.size())});
    if (i > 0) seconds += Since(t0);
    ctx.Truncate(n);
  }
  return seconds / reps;
}

// Mean seconds of one chained MTP draft (one slot, with its logits) after `context` slots.
double TimeDraft(const Model& model, const ContextOptions& options, int64_t context,
                 std::span<const int32_t> pool, int reps) {
  const int64_t D = model.config().hidden_size;
  MtpContext mtp(model, 0, options);
  // The module's cache gets `context` slots; the hidden-state values do not change the cost.
  const int64_t B = options.max_batch;
  AlignedArray<float> hidden(B * D);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < B * D; ++i) hidden[i] = normal(rng);
  std::vector<int32_t> next(static_cast<size_t>(B));
  while (mtp.n_past() < context) {
    const int64_t n = std::min(B, context - mtp.n_past());
    for (int64_t i = 0; i < n; ++i) next[i] = pool[(mtp.n_past() + i) % pool.size()];
    mtp.Forward(hidden.data(), D, std::span<const int32_t>(next.data(), n));
  }
  double seconds = 0;
  for (int i = 0; i <= reps; ++i) {
    const auto t0 = Clock::now();
    mtp.Forward(hidden.data(), D, pool.subspan(i % pool.size(), 1));
    if (i > 0) seconds += Since(t0);
    mtp.Truncate(context);
  }
  return seconds / reps;
}

// Speculative greedy decoding of the same prompt and length as the plain run, then the pass costs
// at the context the decode reached.
MtpBench BenchMtp(const Model& model, const BenchOptions& o, std::span<const int32_t> prompt,
                  const DecodeRun& plain) {
  const int64_t P = o.prompt_tokens, k = o.draft;
  MtpBench b;
  b.draft = k;
  b.plain_tokens_per_second = plain.tokens_per_second();
  const ContextOptions options{P + o.decode_tokens + k + 1,
                               std::max(P, k + 1),
                               AttentionImpl::kAuto,
                               1,
                               o.kv_cache,
                               o.matmul};
  Context ctx(model, options);
  SpeculativeDecoder decoder(model, options, k);
  GenerateOptions g;
  g.max_new_tokens = o.decode_tokens + 1;  // the first comes from the prompt's pass
  g.stop_at_eos = false;
  decoder.Generate(ctx, prompt, g, &b.stats, nullptr);

  constexpr int kReps = 8;
  ctx.Truncate(std::min(ctx.n_past(), P + o.decode_tokens - 1));
  b.step_seconds = TimePass(ctx, prompt, 1, kReps);
  for (int64_t j = 0; j < k; ++j) {
    b.verify_cost.push_back(TimePass(ctx, prompt, j + 2, kReps) / b.step_seconds);
  }
  b.draft_cost = TimeDraft(model, options, ctx.n_past(), prompt, kReps) / b.step_seconds;
  return b;
}

Json MtpJson(const MtpBench& b) {
  Json acceptance = Json::array();
  for (size_t j = 0; j < b.stats.drafts_checked.size(); ++j)
    acceptance.push_back(b.stats.acceptance(j));
  Json projected;
  for (int64_t k = 1; k <= b.draft; ++k) {
    projected[std::to_string(k)] = b.ProjectedSpeedup(0.85, k);
  }
  return {{"draft", b.draft},
          {"acceptance_by_position", acceptance},
          {"tokens_per_step", b.stats.tokens_per_step()},
          {"decode_tokens_per_second", b.stats.decode_tokens_per_second()},
          {"plain_decode_tokens_per_second", b.plain_tokens_per_second},
          {"speedup", b.speedup()},
          {"decode_step_seconds", b.step_seconds},
          {"verify_cost_by_tokens", b.verify_cost},
          {"draft_cost", b.draft_cost},
          {"projected_speedup_at_acceptance_0.85_by_draft", projected}};
}

Json ProfileJson(const ForwardProfile& p, double total) {
  Json j;
  for (int i = 0; i < static_cast<int>(Phase::kCount); ++i) {
    j[ForwardProfile::Name(static_cast<Phase>(i))] = total > 0 ? p.seconds[i] / total : 0.0;
  }
  j["other"] = total > 0 ? (total - p.Total()) / total : 0.0;
  return j;
}

Json DecodeJson(const BenchResult& b, const DecodeRun& r) {
  Json gbs;
  for (int i = 0; i < static_cast<int>(Phase::kCount); ++i) {
    const Phase p = static_cast<Phase>(i);
    gbs[ForwardProfile::Name(p)] = b.PhaseGBs(r, p);
  }
  return {{"context", r.context},
          {"tokens", r.steps},
          {"seconds", r.seconds},
          {"tokens_per_second", r.tokens_per_second()},
          {"attention_fraction", r.attention_fraction()},
          {"phase_fractions", ProfileJson(r.profile, r.seconds)},
          {"phase_gbs", gbs}};
}

}  // namespace

double BenchResult::PhaseGBs(const DecodeRun& run, Phase p) const {
  if (run.steps == 0 || run.profile[p] <= 0) return 0;
  double bytes = static_cast<double>(phase_bytes[static_cast<size_t>(p)]);
  if (p == Phase::kAttnCore) {  // step i attends to context + i + 1 cached rows
    bytes += static_cast<double>(kv_bytes_per_token) *
             (static_cast<double>(run.context) + static_cast<double>(run.steps + 1) / 2);
  }
  return bytes / (run.profile[p] / static_cast<double>(run.steps)) / 1e9;
}

double MtpBench::ProjectedSpeedup(double acceptance, int64_t k) const {
  if (k < 1 || k > static_cast<int64_t>(verify_cost.size())) return 0;
  double tokens = 0, p = 1;  // 1 + a + ... + a^k: draft j counts when drafts 0..j are accepted
  for (int64_t j = 0; j <= k; ++j, p *= acceptance) tokens += p;
  return tokens / (verify_cost[k - 1] + static_cast<double>(k) * draft_cost);
}

Json BenchResult::ToJson() const {
  Json j = {
      {"threads", threads},
      {"kernels", kernels},
      {"matmul", matmul},
      {"lm_head", lm_head},
      {"prefault_seconds", prefault_seconds},
      {"prefill",
       {{"tokens", prompt_tokens},
        {"seconds", prefill_seconds},
        {"tokens_per_second", prefill_tokens_per_second()},
        {"phase_fractions", ProfileJson(prefill_profile, prefill_seconds)}}},
      {"decode", DecodeJson(*this, decode)},
      {"prefill_over_decode", decode.tokens_per_second() > 0
                                  ? prefill_tokens_per_second() / decode.tokens_per_second()
                                  : 0.0},
      {"weight_bytes_per_token", weight_bytes_per_token},
      {"effective_gbs", effective_gbs()},
      {"memory_read_gbs", read_bandwidth_gbs},
      {"bandwidth_ratio", read_bandwidth_gbs > 0 ? effective_gbs() / read_bandwidth_gbs : 0.0},
      {"kv_bytes_per_token", kv_bytes_per_token},
      {"kv_cache", kv_cache},
      {"scratch_bytes", scratch_bytes},
      {"peak_rss_bytes", peak_rss_bytes}};
  if (long_decode.steps > 0) j["long_context_decode"] = DecodeJson(*this, long_decode);
  if (mtp.draft > 0) j["mtp"] = MtpJson(mtp);
  return j;
}

BenchResult RunBench(const Model& model, const BenchOptions& o) {
  const Config& c = model.config();
  if (o.prompt_tokens < 1 || o.decode_tokens < 1) Fail("bench needs -p >= 1 and -n >= 1");
  BenchResult r;
  r.threads = NumThreads();
  r.kernels = kernels::ActiveTarget();
  r.matmul = kernels::MatMulPrecisionName(o.matmul);
  r.lm_head = DTypeName(model.weights().lm_head.dtype);
  r.prompt_tokens = o.prompt_tokens;
  r.weight_bytes_per_token = WeightBytesPerToken(c, model.weights());
  r.phase_bytes = WeightBytesPerPhase(c, model.weights());
  r.kv_bytes_per_token = KvBytesPerToken(c, KvCache::ElementSize(o.kv_cache));
  r.kv_cache = KvCacheTypeName(o.kv_cache);

  // Page in every weight first: the first tokens of a fresh mapping pay page faults that are not
  // decode speed.
  {
    const auto t0 = Clock::now();
    if (model.group() == nullptr) {
      for (const auto& f : model.checkpoint().files()) f->mapping().Prefault();
    } else {
      PrefaultHeld(model);  // a rank of a process group: only the weights it holds
    }
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
    Context ctx(model, {capacity, o.prompt_tokens, AttentionImpl::kAuto, 1, o.kv_cache, o.matmul});
    r.scratch_bytes = ctx.scratch_bytes();
    ctx.set_profile(&r.prefill_profile);
    const auto t0 = Clock::now();
    ctx.Forward(prompt);
    r.prefill_seconds = Since(t0);
    ctx.set_profile(nullptr);
    r.decode = Decode(ctx, Argmax(ctx.last_logits(), c.vocab_size), o.decode_tokens);
  }
  if (o.draft > 0 && !model.mtp().empty()) r.mtp = BenchMtp(model, o, prompt, r.decode);
  if (o.context > 0) {
    const int64_t capacity = o.context + o.decode_tokens;
    if (capacity > c.max_position_embeddings) {
      Fail("--context + -n = {} exceeds max_position_embeddings ({})", capacity,
           c.max_position_embeddings);
    }
    Context ctx(model, {capacity, 1, AttentionImpl::kAuto, 1, o.kv_cache, o.matmul});
    ctx.FillRandomHistory(o.context, o.seed);
    r.long_decode = Decode(ctx, prompt[0], o.decode_tokens);
  }
  r.peak_rss_bytes = PeakRssBytes();
  return r;
}

}  // namespace dsv3
