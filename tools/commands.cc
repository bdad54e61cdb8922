#include "tools/commands.h"

#include <chrono>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "core/json.h"
#include "core/parallel.h"
#include "kernels/targets.h"
#include "model/model.h"
#include "model/model_info.h"
#include "model/mtp.h"
#include "runtime/generate.h"
#include "runtime/speculative.h"
#include "tools/ep.h"

namespace dsv3::cli {

std::string Human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", bytes, units[u])
                : fmt::format("{:.2f} {}", bytes, units[u]);
}

namespace {

using Clock = std::chrono::steady_clock;

std::string Count(int64_t n) {
  return n >= 1000000000 ? fmt::format("{:.2f} B", n / 1e9) : fmt::format("{:.2f} M", n / 1e6);
}

void WriteBinaryAtomic(const std::string& path, const float* data, size_t count) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) Fail("{}: cannot create", tmp);
  const bool ok = std::fwrite(data, sizeof(float), count, f) == count;
  if (std::fclose(f) != 0 || !ok) {
    std::remove(tmp.c_str());
    Fail("{}: write failed (disk full?)", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) Fail("{}: cannot rename to {}", tmp, path);
}

}  // namespace

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::unique_ptr<Model> LoadModel(const std::string& dir, bool quiet,
                                 kernels::MatMulPrecision matmul, const LoadOptions& load) {
  const auto t0 = Clock::now();
  EpSession* ep = Ep();
  std::unique_ptr<Model> m = Model::Load(dir, ep ? ep->group() : nullptr, load);
  if (ep) ep->AfterLoad(*m);  // ranks other than 0 follow rank 0 from here on
  const LoadReport& r = m->report();
  if (!r.unused.empty()) {
    std::string list;
    for (size_t i = 0; i < r.unused.size() && i < 5; ++i) list += (i ? ", " : "") + r.unused[i];
    if (r.unused.size() > 5) list += fmt::format(", ... ({} more)", r.unused.size() - 5);
    std::fprintf(stderr, "dsv3: warning: %zu tensor(s) in the checkpoint are not used: %s\n",
                 r.unused.size(), list.c_str());
  }
  if (!quiet) {
    const bool bf16 = matmul == kernels::MatMulPrecision::kBF16;
    std::fprintf(stderr, "dsv3: loaded %s in %.2f s (%s kernels%s%s)\n", dir.c_str(), Seconds(t0),
                 kernels::ActiveTarget().c_str(), bf16 ? ", bf16 matmul" : "",
                 load.fp8_lm_head ? ", lm_head quantized to fp8" : "");
  }
  return m;
}

// "MTP draft 2: 1.43 tokens per main step, acceptance 38.0% 12.1%"
std::string MtpSummary(const GenerateStats& s) {
  std::string acc;
  for (size_t j = 0; j < s.drafts_checked.size(); ++j)
    acc += fmt::format(" {:.1f}%", 100 * s.acceptance(j));
  return fmt::format("MTP draft {}: {:.2f} tokens per main step, acceptance by draft position{}",
                     s.drafts_checked.size(), s.tokens_per_step(), acc);
}

std::vector<int32_t> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    size_t end = text.find(',', i);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(i, end - i);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < 0 || v > INT32_MAX) {
      Fail("--ids: '{}' is not a token id (expected non-negative integers separated by commas)",
           item);
    }
    ids.push_back(static_cast<int32_t>(v));
    i = end + 1;
  }
  if (ids.empty()) Fail("--ids: no token ids given");
  return ids;
}

int RunInfo(const InfoArgs& a) {
  std::unique_ptr<Model> m = LoadModel(a.model_dir, /*quiet=*/true);
  const Config& c = m->config();
  const Weights& w = m->weights();
  const ParamCounts p = CountParams(c);

  int64_t dense = 0, moe = 0;
  for (const LayerWeights& l : w.layers) (l.is_moe ? moe : dense) += 1;
  std::map<std::string, uint64_t> bytes_by_dtype;
  for (const TensorInfo* t : m->checkpoint().tensors())
    bytes_by_dtype[DTypeName(t->dtype)] += t->nbytes;
  const uint64_t per_token = WeightBytesPerToken(c, w);
  const int64_t kv_f32 = KvBytesPerToken(c, 4), kv_bf16 = KvBytesPerToken(c, 2);

  Json j;
  j["model_dir"] = a.model_dir;
  j["model_type"] = c.model_type;
  j["layers"] = {{"total", c.num_hidden_layers},
                 {"dense", dense},
                 {"moe", moe},
                 {"mtp", c.num_nextn_predict_layers}};
  j["hidden_size"] = c.hidden_size;
  j["attention"] = {
      {"heads", c.num_attention_heads},          {"q_lora_rank", c.q_lora_rank},
      {"kv_lora_rank", c.kv_lora_rank},          {"qk_nope_head_dim", c.qk_nope_head_dim},
      {"qk_rope_head_dim", c.qk_rope_head_dim},  {"v_head_dim", c.v_head_dim},
      {"softmax_scale", m->rope().softmax_scale}};
  if (c.n_routed_experts > 0) {
    j["moe"] = {{"routed_experts", c.n_routed_experts},
                {"experts_per_token", c.num_experts_per_tok},
                {"shared_experts", c.n_shared_experts},
                {"n_group", c.n_group},
                {"topk_group", c.topk_group},
                {"topk_method", TopkMethodName(c.topk_method)},
                {"scoring_func", ScoringFuncName(c.scoring_func)},
                {"norm_topk_prob", c.norm_topk_prob},
                {"routed_scaling_factor", c.routed_scaling_factor},
                {"moe_intermediate_size", c.moe_intermediate_size}};
  }
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["parameters"] = {{"total", p.total},
                     {"activated", p.activated},
                     {"activated_with_embedding", p.activated_with_embedding},
                     {"embedding", p.embedding},
                     {"mtp", p.mtp},
                     {"convention",
                      "total includes embedding and lm_head, excludes MTP; activated "
                      "excludes the input embedding and unselected routed experts"}};
  j["weights"] = {
      {"files", m->checkpoint().files().size()},
      {"bytes_total", m->checkpoint().total_bytes()},
      {"bytes_main", m->report().main_bytes},
      {"bytes_mtp", m->report().mtp_bytes},
      {"bytes_read_per_token", per_token},
      {"bytes_by_dtype", bytes_by_dtype},
      {"fp8_block",
       c.quant_block_rows ? Json::array({c.quant_block_rows, c.quant_block_cols}) : Json()}};
  j["kv_cache"] = {{"bytes_per_token", kv_f32},
                   {"dtype", "float32"},
                   {"bytes_per_token_bf16", kv_bf16},
                   {"values_per_token_per_layer", c.kv_width()}};
  j["unused_tensors"] = m->report().unused;
  j["kernels"] = kernels::ActiveTarget();
  if (Ep() && Ep()->active()) j["expert_parallel"] = Json::parse(Ep()->Holdings(*m));

  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("model        %s (%s)\n", a.model_dir.c_str(), c.model_type.c_str());
  std::printf("layers       %lld: %lld dense + %lld MoE, %lld MTP\n",
              (long long)c.num_hidden_layers, (long long)dense, (long long)moe,
              (long long)c.num_nextn_predict_layers);
  std::printf(
      "attention    MLA, %lld heads, q_lora %lld, kv_lora %lld, qk %lld+%lld (nope+rope), v %lld, "
      "softmax scale %.6g\n",
      (long long)c.num_attention_heads, (long long)c.q_lora_rank, (long long)c.kv_lora_rank,
      (long long)c.qk_nope_head_dim, (long long)c.qk_rope_head_dim, (long long)c.v_head_dim,
      m->rope().softmax_scale);
  if (c.n_routed_experts > 0) {
    std::printf(
        "moe          %lld routed (top %lld, %s, %s, groups %lld keep %lld, norm %s, scale %g) + "
        "%lld shared, width %lld\n",
        (long long)c.n_routed_experts, (long long)c.num_experts_per_tok,
        ScoringFuncName(c.scoring_func), TopkMethodName(c.topk_method), (long long)c.n_group,
        (long long)c.topk_group, c.norm_topk_prob ? "yes" : "no", c.routed_scaling_factor,
        (long long)c.n_shared_experts, (long long)c.moe_intermediate_size);
  }
  std::printf("vocab        %lld, max positions %lld\n", (long long)c.vocab_size,
              (long long)c.max_position_embeddings);
  std::printf(
      "parameters   %s total, %s activated per token (input embedding excluded; %s with it), MTP "
      "%s\n",
      Count(p.total).c_str(), Count(p.activated).c_str(), Count(p.activated_with_embedding).c_str(),
      Count(p.mtp).c_str());
  std::string dtypes;
  for (const auto& [d, b] : bytes_by_dtype)
    dtypes += fmt::format("{}{} {}", dtypes.empty() ? "" : ", ", d, Human(b));
  std::printf(
      "weights      %s in %zu file(s) (%s); main model %s, MTP %s; read per decoded token %s\n",
      Human(m->checkpoint().total_bytes()).c_str(), m->checkpoint().files().size(), dtypes.c_str(),
      Human(m->report().main_bytes).c_str(), Human(m->report().mtp_bytes).c_str(),
      Human(per_token).c_str());
  std::printf(
      "kv cache     %lld bytes per token = %lld layers x (%lld + %lld) values x 4 bytes (float32); "
      "%lld in bf16\n",
      (long long)kv_f32, (long long)c.num_hidden_layers, (long long)c.kv_lora_rank,
      (long long)c.qk_rope_head_dim, (long long)kv_bf16);
  std::printf("kernels      %s\n", kernels::ActiveTarget().c_str());
  for (const Json& r : j.value("expert_parallel", Json::array())) {
    const double held = r["bytes_held"], elsewhere = r["bytes_elsewhere"], rss = r["rss_bytes"];
    std::printf("rank %-7d routed experts %lld-%lld: holds %s, other ranks %s; resident %s\n",
                r["rank"].get<int>(), r["routed_experts"][0].get<long long>(),
                r["routed_experts"][1].get<long long>(), Human(held).c_str(),
                Human(elsewhere).c_str(), Human(rss).c_str());
  }
  return 0;
}

int RunLogits(const LogitsArgs& a) {
  const std::vector<int32_t> ids = ParseIds(a.ids);
  std::unique_ptr<Model> m = LoadModel(a.model_dir, /*quiet=*/false, a.matmul, a.load);
  const Config& c = m->config();
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n > c.max_position_embeddings) {
    Fail("{} tokens exceed max_position_embeddings ({})", n, c.max_position_embeddings);
  }
  ContextOptions opts;
  opts.capacity = n;
  opts.max_batch = a.decode ? 1 : n;
  opts.attention = a.attention;
  opts.kv_cache = a.kv_cache;
  opts.matmul = a.matmul;
  Context ctx(*m, opts);
  std::vector<float> logits(static_cast<size_t>(n * c.vocab_size));
  const auto t0 = Clock::now();
  if (a.mtp) {
    // Slot i: main hidden state at i and token i+1 (the main model's greedy token after the last).
    if (m->mtp().empty()) Fail("{}: the checkpoint has no MTP module (--mtp)", a.model_dir);
    std::vector<float> hidden(static_cast<size_t>(n * c.hidden_size));
    ctx.Forward(ids, {.hidden = hidden});
    std::vector<int32_t> next(ids.begin() + 1, ids.end());
    next.push_back(Argmax(ctx.last_logits(), c.vocab_size));
    MtpContext mtp(*m, 0, opts);
    mtp.Forward(hidden.data(), c.hidden_size, next, {.logits = logits});
  } else if (a.decode) {
    for (int64_t i = 0; i < n; ++i) {
      ctx.Forward(std::span<const int32_t>(&ids[i], 1));
      std::copy_n(ctx.last_logits(), c.vocab_size, logits.begin() + i * c.vocab_size);
    }
  } else {
    ctx.Forward(ids, {.logits = logits});
  }
  const double secs = Seconds(t0);
  WriteBinaryAtomic(a.output, logits.data(), logits.size());
  std::fprintf(stderr, "dsv3: wrote %s: float32 [%lld, %lld] (%s, %.1f tokens/s)\n",
               a.output.c_str(), (long long)n, (long long)c.vocab_size,
               a.mtp      ? "MTP"
               : a.decode ? "decode"
                          : "prefill",
               n / secs);
  return 0;
}

int RunGenerate(const GenerateArgs& a) {
  if (a.text) return RunGenerateText(a);
  if (!a.stop.empty()) Fail("--stop works on text: give the prompt with -p");
  const std::vector<int32_t> prompt = ParseIds(a.ids);
  std::unique_ptr<Model> m = LoadModel(a.model_dir, /*quiet=*/false, a.matmul, a.load);
  Generation gen = SetUpGeneration(*m, a, prompt.size());
  GenerateOptions g;
  g.max_new_tokens = a.n;
  g.sampling = a.sampling;
  g.stop_at_eos = !a.ignore_eos;
  GenerateStats stats;
  std::vector<int32_t> tokens;
  Generate(
      *gen.context, prompt, g, &stats,
      [&](int32_t token) {
        if (!a.json) {
          std::printf(tokens.empty() ? "%d" : ",%d", token);
          std::fflush(stdout);
        }
        tokens.push_back(token);
        return true;
      },
      gen.speculative.get());
  if (a.json) {
    PrintGenerateJson(stats, *gen.context, tokens, nullptr);
    return 0;
  }
  std::printf("\n");
  std::fflush(stdout);
  PrintGenerateStats(stats, *gen.context);
  return 0;
}

Generation SetUpGeneration(const Model& m, const GenerateArgs& a, size_t prompt_tokens) {
  if (a.n < 0) Fail("-n must be >= 0, got {}", a.n);
  const Config& c = m.config();
  // Positions used: the prompt, then every new token but the last is fed back.
  const int64_t needed = static_cast<int64_t>(prompt_tokens) + std::max<int64_t>(a.n - 1, 0);
  if (needed > c.max_position_embeddings) {
    Fail("prompt ({} tokens) plus {} new tokens exceed max_position_embeddings ({})", prompt_tokens,
         a.n, c.max_position_embeddings);
  }
  const bool mtp = UseMtp(m, a.no_mtp);
  ContextOptions opts;
  // Speculative steps feed up to `draft` tokens beyond the last one kept (fewer near the end).
  opts.capacity = a.ctx_size > 0
                      ? a.ctx_size
                      : std::min(needed + (mtp ? a.draft : 0), c.max_position_embeddings);
  opts.max_batch = std::min<int64_t>(static_cast<int64_t>(prompt_tokens), 512);
  opts.kv_cache = a.kv_cache;
  opts.matmul = a.matmul;
  Generation g;
  g.context = std::make_unique<Context>(m, opts);
  if (mtp) g.speculative = std::make_unique<SpeculativeDecoder>(m, opts, a.draft);
  return g;
}

bool UseMtp(const Model& m, bool no_mtp) {
  if (!no_mtp && m.mtp().empty() && m.config().num_nextn_predict_layers > 0) {
    std::fprintf(stderr,
                 "dsv3: note: config.json declares MTP layers but the checkpoint has none; "
                 "decoding without drafts\n");
  }
  return !no_mtp && !m.mtp().empty();
}

void PrintGenerateStats(const GenerateStats& stats, const Context& ctx) {
  const Config& c = ctx.model().config();
  std::fprintf(
      stderr,
      "dsv3: prefill %lld tokens in %.3f s (%.1f tokens/s); decode %lld tokens in %.3f s "
      "(%.2f tokens/s); KV cache %lld bytes/token (%lld layers x %lld %s)\n",
      (long long)stats.prompt_tokens, stats.prefill_seconds, stats.prefill_tokens_per_second(),
      (long long)stats.decode_tokens, stats.decode_seconds, stats.decode_tokens_per_second(),
      (long long)ctx.cache().bytes_per_token(), (long long)c.num_hidden_layers,
      (long long)c.kv_width(), ctx.cache().type() == KvCacheType::kBF16 ? "BF16 values" : "floats");
  if (!stats.drafts_checked.empty()) std::fprintf(stderr, "dsv3: %s\n", MtpSummary(stats).c_str());
}

void PrintGenerateJson(const GenerateStats& stats, const Context& ctx,
                       const std::vector<int32_t>& tokens, const std::string* text) {
  Json j{{"ids", tokens},
         {"prompt_tokens", stats.prompt_tokens},
         {"new_tokens", stats.new_tokens},
         {"prefill_seconds", stats.prefill_seconds},
         {"prefill_tokens_per_second", stats.prefill_tokens_per_second()},
         {"decode_tokens", stats.decode_tokens},
         {"decode_steps", stats.decode_steps},
         {"decode_seconds", stats.decode_seconds},
         {"decode_tokens_per_second", stats.decode_tokens_per_second()},
         {"kv_cache_bytes_per_token", ctx.cache().bytes_per_token()}};
  if (text) j["text"] = *text;
  if (!stats.drafts_checked.empty()) {
    j["mtp"] = {{"draft", stats.drafts_checked.size()},
                {"drafts_checked", stats.drafts_checked},
                {"drafts_accepted", stats.drafts_accepted},
                {"tokens_per_main_step", stats.tokens_per_step()}};
  }
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

int RunBench(const BenchArgs& a) {
  std::vector<int> thread_counts;
  if (a.threads.empty()) {
    thread_counts.push_back(NumThreads());
  } else {
    for (int32_t t : ParseIds(a.threads)) {
      if (t < 1) Fail("-t: thread counts must be >= 1");
      thread_counts.push_back(t);
    }
  }
  if (a.draft < 1 || a.draft > kMaxDraft) {
    Fail("--draft must be between 1 and {}, got {}", kMaxDraft, a.draft);
  }
  if (a.ep_report && a.json) Fail("--ep-report prints a text report: drop --json");
  std::unique_ptr<Model> m = LoadModel(a.model_dir, a.json, a.options.matmul, a.load);
  std::fflush(stdout);
  BenchOptions options = a.options;
  options.draft = UseMtp(*m, a.no_mtp) ? a.draft : 0;
  std::vector<BenchResult> results;
  for (int t : thread_counts) {
    SetNumThreads(t);
    if (!a.json) std::fprintf(stderr, "dsv3: bench with %d thread(s)...\n", t);
    std::fflush(stderr);
    results.push_back(RunBench(*m, options));
  }
  if (a.json) {
    Json j;
    j["model_dir"] = a.model_dir;
    j["runs"] = Json::array();
    for (const BenchResult& r : results) j["runs"].push_back(r.ToJson());
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  const BenchResult& first = results.front();
  std::printf(
      "model %s: %s per decoded token, KV cache %lld B/token (%s), %s kernels, %s matmul, "
      "lm_head %s\n",
      a.model_dir.c_str(), Human(static_cast<double>(first.weight_bytes_per_token)).c_str(),
      (long long)first.kv_bytes_per_token, first.kv_cache.c_str(), first.kernels.c_str(),
      first.matmul.c_str(), first.lm_head.c_str());
  std::printf("%7s %14s %13s %8s %11s %10s %6s %10s %10s\n", "threads", "prefill tok/s",
              "decode tok/s", "pre/dec", "weight GB/s", "read GB/s", "ratio", "peak RSS",
              "scratch");
  for (const BenchResult& r : results) {
    std::printf("%7d %14.2f %13.3f %8.1f %11.2f %10.2f %6.2f %10s %10s\n", r.threads,
                r.prefill_tokens_per_second(), r.decode.tokens_per_second(),
                r.prefill_tokens_per_second() / r.decode.tokens_per_second(), r.effective_gbs(),
                r.read_bandwidth_gbs, r.effective_gbs() / r.read_bandwidth_gbs,
                Human(static_cast<double>(r.peak_rss_bytes)).c_str(),
                Human(static_cast<double>(r.scratch_bytes)).c_str());
  }
  for (const BenchResult& r : results) {
    // Each phase's share of the time; for decode also the bytes it read per second.
    auto phases = [&r](const ForwardProfile& p, double total, const DecodeRun* run) {
      std::string s;
      for (int i = 0; i < static_cast<int>(Phase::kCount); ++i) {
        if (p.seconds[i] <= 0) continue;
        const Phase phase = static_cast<Phase>(i);
        s += fmt::format(" {} {:.1f}%", ForwardProfile::Name(phase), 100 * p.seconds[i] / total);
        const double gbs = run ? r.PhaseGBs(*run, phase) : 0;
        if (gbs > 0) s += fmt::format(" ({:.1f} GB/s)", gbs);
      }
      return s;
    };
    std::printf("t=%d prefill (%lld tokens):%s\n", r.threads, (long long)r.prompt_tokens,
                phases(r.prefill_profile, r.prefill_seconds, nullptr).c_str());
    std::printf("t=%d decode (context %lld):%s\n", r.threads, (long long)r.decode.context,
                phases(r.decode.profile, r.decode.seconds, &r.decode).c_str());
    if (r.long_decode.steps > 0) {
      std::printf("t=%d decode at context %lld: %.3f tok/s, attention %.1f%% of the step:%s\n",
                  r.threads, (long long)r.long_decode.context, r.long_decode.tokens_per_second(),
                  100 * r.long_decode.attention_fraction(),
                  phases(r.long_decode.profile, r.long_decode.seconds, &r.long_decode).c_str());
    }
  }
  for (const BenchResult& r : results) {
    const MtpBench& b = r.mtp;
    if (b.draft == 0) continue;
    std::printf("t=%d %s; decode %.3f tok/s with MTP vs %.3f without: x%.2f\n", r.threads,
                MtpSummary(b.stats).c_str(), b.stats.decode_tokens_per_second(),
                b.plain_tokens_per_second, b.speedup());
    std::string costs;
    for (size_t j = 0; j < b.verify_cost.size(); ++j) {
      costs += fmt::format("{}{} tokens {:.2f}", j ? ", " : "", j + 2, b.verify_cost[j]);
    }
    std::string projected;
    for (int64_t k = 1; k <= b.draft; ++k) {
      projected +=
          fmt::format("{}draft {} x{:.2f}", k > 1 ? ", " : "", k, b.ProjectedSpeedup(0.85, k));
    }
    std::printf(
        "t=%d cost relative to a 1-token decode step (%.1f ms): verification pass %s; one MTP "
        "draft %.2f; at 85%% acceptance: %s\n",
        r.threads, 1e3 * b.step_seconds, costs.c_str(), b.draft_cost, projected.c_str());
  }
  if (a.ep_report) Ep()->PrintReport(*m, options);
  if (results.size() > 1) {
    std::printf("thread scaling %d -> %d: prefill x%.2f, decode x%.2f\n", results.front().threads,
                results.back().threads,
                results.back().prefill_tokens_per_second() / first.prefill_tokens_per_second(),
                results.back().decode.tokens_per_second() / first.decode.tokens_per_second());
  }
  return 0;
}

int RunSynth(const SynthOptions& options, const std::string& tokenizer) {
  const auto t0 = Clock::now();
  SynthOptions a = options;
  if (!tokenizer.empty()) AddTokenizerToSynth(tokenizer, &a);
  const uint64_t bytes = Synthesize(a);
  std::fprintf(stderr, "dsv3: wrote %s (%s, preset %s, %s) in %.1f s\n", a.out_dir.c_str(),
               Human(static_cast<double>(bytes)).c_str(), a.preset.c_str(), a.dtype.c_str(),
               Seconds(t0));
  return 0;
}

}  // namespace dsv3::cli
