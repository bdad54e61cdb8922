#include "tools/commands.h"

#include <chrono>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "core/json.h"
#include "kernels/targets.h"
#include "model/model.h"
#include "model/model_info.h"
#include "runtime/generate.h"

namespace dsv3::cli {
namespace {

using Clock = std::chrono::steady_clock;

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

std::string Count(int64_t n) {
  return n >= 1000000000 ? fmt::format("{:.2f} B", n / 1e9) : fmt::format("{:.2f} M", n / 1e6);
}

uint64_t MlpBytes(const MlpWeights& m) { return m.gate.bytes() + m.up.bytes() + m.down.bytes(); }

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

std::unique_ptr<Model> LoadModel(const std::string& dir, bool quiet) {
  const auto t0 = Clock::now();
  std::unique_ptr<Model> m = Model::Load(dir);
  const LoadReport& r = m->report();
  if (!r.unused.empty()) {
    std::string list;
    for (size_t i = 0; i < r.unused.size() && i < 5; ++i) list += (i ? ", " : "") + r.unused[i];
    if (r.unused.size() > 5) list += fmt::format(", ... ({} more)", r.unused.size() - 5);
    std::fprintf(stderr, "dsv3: warning: %zu tensor(s) in the checkpoint are not used: %s\n",
                 r.unused.size(), list.c_str());
  }
  if (!quiet) {
    std::fprintf(stderr, "dsv3: loaded %s in %.2f s (%s kernels)\n", dir.c_str(), Seconds(t0),
                 kernels::ActiveTarget().c_str());
  }
  return m;
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
  // Weight bytes one decoded token reads: everything but unselected experts and the embedding
  // table (one row of it).
  uint64_t per_token = m->report().main_bytes - w.embed.bytes() + w.embed.bytes() / c.vocab_size;
  for (const LayerWeights& l : w.layers) {
    if (l.is_moe)
      per_token -= (c.n_routed_experts - c.num_experts_per_tok) * MlpBytes(l.moe.experts[0]);
  }
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
  return 0;
}

int RunLogits(const LogitsArgs& a) {
  const std::vector<int32_t> ids = ParseIds(a.ids);
  std::unique_ptr<Model> m = LoadModel(a.model_dir);
  const Config& c = m->config();
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n > c.max_position_embeddings) {
    Fail("{} tokens exceed max_position_embeddings ({})", n, c.max_position_embeddings);
  }
  ContextOptions opts;
  opts.capacity = n;
  opts.max_batch = a.decode ? 1 : n;
  opts.attention = a.attention;
  Context ctx(*m, opts);
  std::vector<float> logits(static_cast<size_t>(n * c.vocab_size));
  const auto t0 = Clock::now();
  if (a.decode) {
    for (int64_t i = 0; i < n; ++i) {
      ctx.Forward(std::span<const int32_t>(&ids[i], 1));
      std::copy_n(ctx.last_logits(), c.vocab_size, logits.begin() + i * c.vocab_size);
    }
  } else {
    ctx.Forward(ids, logits.data());
  }
  const double secs = Seconds(t0);
  WriteBinaryAtomic(a.output, logits.data(), logits.size());
  std::fprintf(stderr, "dsv3: wrote %s: float32 [%lld, %lld] (%s, %.1f tokens/s)\n",
               a.output.c_str(), (long long)n, (long long)c.vocab_size,
               a.decode ? "decode" : "prefill", n / secs);
  return 0;
}

int RunGenerate(const GenerateArgs& a) {
  if (a.text) return RunGenerateText(a);
  if (!a.stop.empty()) Fail("--stop works on text: give the prompt with -p");
  const std::vector<int32_t> prompt = ParseIds(a.ids);
  std::unique_ptr<Model> m = LoadModel(a.model_dir);
  const std::unique_ptr<Context> context = GenerateContext(*m, a, prompt.size());
  Context& ctx = *context;
  GenerateOptions g;
  g.max_new_tokens = a.n;
  g.sampling = a.sampling;
  g.stop_at_eos = !a.ignore_eos;
  GenerateStats stats;
  bool first = true;
  Generate(ctx, prompt, g, &stats, [&](int32_t token) {
    std::printf(first ? "%d" : ",%d", token);
    std::fflush(stdout);
    first = false;
    return true;
  });
  std::printf("\n");
  std::fflush(stdout);
  PrintGenerateStats(stats, ctx);
  return 0;
}

std::unique_ptr<Context> GenerateContext(const Model& m, const GenerateArgs& a,
                                         size_t prompt_tokens) {
  if (a.n < 0) Fail("-n must be >= 0, got {}", a.n);
  const Config& c = m.config();
  // Positions used: the prompt, then every new token but the last is fed back.
  const int64_t needed = static_cast<int64_t>(prompt_tokens) + std::max<int64_t>(a.n - 1, 0);
  if (needed > c.max_position_embeddings) {
    Fail("prompt ({} tokens) plus {} new tokens exceed max_position_embeddings ({})", prompt_tokens,
         a.n, c.max_position_embeddings);
  }
  ContextOptions opts;
  opts.capacity = a.ctx_size > 0 ? a.ctx_size : needed;
  opts.max_batch = std::min<int64_t>(static_cast<int64_t>(prompt_tokens), 512);
  return std::make_unique<Context>(m, opts);
}

void PrintGenerateStats(const GenerateStats& stats, const Context& ctx) {
  const Config& c = ctx.model().config();
  std::fprintf(stderr,
               "dsv3: prefill %lld tokens in %.3f s (%.1f tokens/s); decode %lld tokens in %.3f s "
               "(%.2f tokens/s); KV cache %lld bytes/token (%lld layers x %lld floats)\n",
               (long long)stats.prompt_tokens, stats.prefill_seconds,
               stats.prefill_tokens_per_second(), (long long)stats.decode_steps,
               stats.decode_seconds, stats.decode_tokens_per_second(),
               (long long)ctx.cache().bytes_per_token(), (long long)c.num_hidden_layers,
               (long long)c.kv_width());
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
