#include "analysis/report.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dsv3::analysis {
namespace {

constexpr const char* kParamsConvention =
    "total: every main-model weight, input embedding and lm_head included, MTP modules excluded; "
    "activated: the weights one token multiplies with, lm_head included, the input embedding (a "
    "row lookup) and the unselected routed experts excluded";

// Columns of text two spaces apart. `align` has one letter per column, 'l' or 'r'; columns
// past its end are right-aligned (numbers), the first defaults to left.
class Table {
 public:
  explicit Table(std::string align = "l") : align_(std::move(align)) {}
  void Row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  std::string Render(const std::string& indent) const {
    std::vector<size_t> width;
    for (const auto& row : rows_) {
      if (width.size() < row.size()) width.resize(row.size(), 0);
      for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line = indent;
      for (size_t i = 0; i < row.size(); ++i) {
        const std::string pad(width[i] - row[i].size(), ' ');
        const bool left = i < align_.size() && align_[i] == 'l';
        line += (i ? "  " : "") + (left ? row[i] + pad : pad + row[i]);
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line + "\n";
    }
    return out;
  }

 private:
  std::string align_;
  std::vector<std::vector<std::string>> rows_;
};

std::string Giga(double flops) { return fmt::format("{:.2f}", flops / 1e9); }

// "61 layers (3 dense + 58 MoE)" or "80 layers".
std::string LayersText(const Arch& a) {
  if (!a.is_moe()) return fmt::format("{} layers", a.layers);
  return fmt::format("{} layers ({} dense + {} MoE)", a.layers, a.layers - a.moe_layers,
                     a.moe_layers);
}

std::string KvFormula(const Arch& a, int64_t bytes_per_value) {
  if (a.attention == AttentionKind::kMla) {
    return fmt::format("{} layers x ({} + {}) values x {} B", a.layers, a.kv_lora_rank,
                       a.qk_rope_head_dim, bytes_per_value);
  }
  return fmt::format("2 x {} layers x {} KV heads x {} head_dim x {} B", a.layers, a.kv_heads,
                     a.qk_head_dim, bytes_per_value);
}

std::string KvFormulaJson(const Arch& a) {
  return a.attention == AttentionKind::kMla
             ? "num_hidden_layers * (kv_lora_rank + qk_rope_head_dim) * bytes_per_value"
             : "2 * num_hidden_layers * num_key_value_heads * head_dim * bytes_per_value";
}

int64_t Lookup(const std::vector<std::pair<std::string, int64_t>>& v, const std::string& key) {
  for (const auto& [k, n] : v) {
    if (k == key) return n;
  }
  return 0;
}

Json ArchJson(const Arch& a) {
  Json j;
  j["name"] = a.name;
  j["source"] = a.source;
  j["model_type"] = a.model_type;
  j["attention"] = a.AttentionLabel();
  j["layers"] = a.layers;
  j["hidden_size"] = a.hidden;
  j["heads"] = a.heads;
  j["qk_head_dim"] = a.qk_head_dim;
  j["v_head_dim"] = a.v_head_dim;
  if (a.attention == AttentionKind::kMla) {
    j["kv_lora_rank"] = a.kv_lora_rank;
    j["qk_rope_head_dim"] = a.qk_rope_head_dim;
  } else {
    j["kv_heads"] = a.kv_heads;
  }
  j["vocab_size"] = a.vocab;
  if (a.is_moe()) {
    j["moe"] = {{"layers", a.moe_layers},
                {"routed_experts", a.routed_experts},
                {"experts_per_token", a.experts_per_token},
                {"shared_experts", a.shared_experts}};
  }
  j["mtp_modules"] = a.mtp_modules;
  return j;
}

Json BoundJson(const DecodeBound& b) {
  Json j = {{"machine", b.machine.name},
            {"bandwidth_gbs", b.machine.bandwidth_gbs},
            {"weights_format", WeightFormatName(b.weights)},
            {"kv_bytes_per_value", b.kv_bytes_per_value},
            {"context", b.context},
            {"weight_bytes_per_token", b.weight_bytes},
            {"kv_bytes_per_token", b.kv_bytes},
            {"bytes_per_token", b.bytes},
            {"tokens_per_s_memory", b.memory_tokens_per_s},
            {"flops_per_token", b.flops},
            {"tokens_per_s", b.tokens_per_s},
            {"bound_by", b.bound_by}};
  if (b.machine.tflops > 0) {
    j["tflops"] = b.machine.tflops;
    j["tokens_per_s_compute"] = b.compute_tokens_per_s;
  }
  return j;
}

Json ReportJson(const ConfigReport& r, const AnalyzeOptions& o) {
  const Arch& a = *r.arch;
  Json j = ArchJson(a);
  j["kv_cache_bytes_per_token"] = r.kv_bf16();
  Json kv;
  for (const auto& [dtype, n] : r.kv_per_token) kv["bytes_per_token"][dtype] = n;
  for (const auto& [dtype, n] : r.kv_at_context) kv["bytes"][dtype] = n;
  kv["values_per_token_per_layer"] = KvValuesPerTokenPerLayer(a);
  kv["formula"] = KvFormulaJson(a);
  kv["context"] = o.context;
  kv["batch"] = o.batch;
  kv["tokens_cached_per_sequence"] = r.kv_cached_tokens;
  if (a.sliding_window > 0) kv["sliding_window"] = a.sliding_window;
  if (a.mtp_modules > 0) kv["mtp_bytes_per_token_bf16"] = r.mtp_kv_per_token_bf16;
  j["kv_cache"] = kv;

  j["params_total"] = a.params.total;
  j["params_activated"] = a.params.activated;
  j["params_activated_with_embedding"] = a.params.activated_with_embedding;
  j["params_embedding"] = a.params.embedding;
  j["params_convention"] = kParamsConvention;

  Json w;
  w["stored_format"] = a.stored_format;
  for (const auto& [f, b] : r.weights) {
    w[WeightFormatName(f)] = {{"bytes_total", b.total},
                              {"bytes_per_token", b.per_token},
                              {"bytes_mtp", b.mtp},
                              {"layout", DescribeWeightFormat(f, a, o.group_size)}};
  }
  w["convention"] =
      "bytes_per_token: activated weights (as params_activated) plus the token's embedding row";
  j["weights"] = w;

  if (a.mtp_modules > 0) {
    j["mtp"] = {{"modules", a.mtp_modules},
                {"params_stored", r.mtp.stored},
                {"params_block", r.mtp.block},
                {"params_eh_proj", r.mtp.projection},
                {"params_norms", r.mtp.norms},
                {"params_embedding_copy", r.mtp.embedding_copy},
                {"params_head_copy", r.mtp.head_copy},
                {"params_activated_per_draft", r.mtp.activated_per_draft},
                {"acceptance", o.mtp_acceptance},
                {"draft_cost", r.draft_cost},
                {"draft_cost_estimated", r.draft_cost_estimated},
                {"tokens_per_step", r.mtp_speedup.tokens_per_step},
                {"speedup", r.mtp_speedup.speedup}};
  }

  j["train_flops_per_token"] = r.train.total;
  j["train_flops"] = {
      {"seq_len", r.train.seq_len},
      {"attended", r.train.attended},
      {"weights", r.train.weights},
      {"attention", r.train.attention},
      {"formula",
       "6 * params_activated + 6 * layers * heads * (qk_head_dim + v_head_dim) * seq_len / 2"},
      {"paper_dense_approximation", r.train.paper_dense_approximation},
      {"paper_dense_approximation_formula",
       "72 * layers * hidden_size^2 + 6 * vocab_size * hidden_size (approximation)"}};
  j["decode_flops_per_token"] = r.decode.total;
  j["decode_flops"] = {
      {"context", r.decode.context},
      {"attended", r.decode.attended},
      {"weights", r.decode.weights},
      {"attention", r.decode.attention},
      {"formula",
       "2 * params_activated + 2 * layers * heads * (qk_head_dim + v_head_dim) * context"},
      {"attention_absorbed", r.decode.attention_absorbed},
      {"total_absorbed", r.decode.total_absorbed}};
  if (r.bound) j["decode_bound"] = BoundJson(*r.bound);
  return j;
}

// ---- text: one config in detail ---------------------------------------------------------------

std::string DetailText(const ConfigReport& r, const AnalyzeOptions& o) {
  const Arch& a = *r.arch;
  std::string s = fmt::format("{} ({}, {})\n", a.name, a.model_type, a.source);
  std::string arch = fmt::format("{}, hidden {}, vocab {}; {} with {} heads", LayersText(a),
                                 a.hidden, Grouped(a.vocab), a.AttentionLabel(), a.heads);
  if (a.attention == AttentionKind::kMla) {
    arch += fmt::format(" (kv_lora_rank {}, qk {} + {}, v {})", a.kv_lora_rank,
                        a.qk_head_dim - a.qk_rope_head_dim, a.qk_rope_head_dim, a.v_head_dim);
  } else {
    arch += fmt::format(" (head_dim {})", a.qk_head_dim);
  }
  if (a.is_moe()) {
    arch += fmt::format("; {} routed experts, {} per token", a.routed_experts, a.experts_per_token);
    if (a.shared_experts > 0) arch += fmt::format(", + {} shared", a.shared_experts);
  }
  if (a.mtp_modules > 0) {
    arch += fmt::format("; {} MTP module{}", a.mtp_modules, a.mtp_modules > 1 ? "s" : "");
  }
  if (a.sliding_window > 0) arch += fmt::format("; sliding window {}", a.sliding_window);
  s += "  " + arch + "\n\n";

  Table kv("ll");
  kv.Row({"per token", fmt::format("{} B (bf16) = {}", Grouped(r.kv_bf16()), KvFormula(a, 2))});
  kv.Row({"", fmt::format("{} B (fp8), {} B (f32)", Grouped(Lookup(r.kv_per_token, "fp8")),
                          Grouped(Lookup(r.kv_per_token, "f32")))});
  if (a.mtp_modules > 0) {
    kv.Row({"", fmt::format("+ {} B (bf16) for the MTP modules' own cache when drafting",
                            Grouped(r.mtp_kv_per_token_bf16))});
  }
  const std::string held =
      r.kv_cached_tokens < o.context ? fmt::format(" ({} held: window)", r.kv_cached_tokens) : "";
  kv.Row({fmt::format("at {} tokens x {} sequence{}", Grouped(o.context), o.batch,
                      o.batch > 1 ? "s" : ""),
          fmt::format("{} (bf16), {} (fp8){}", DecimalBytes(Lookup(r.kv_at_context, "bf16")),
                      DecimalBytes(Lookup(r.kv_at_context, "fp8")), held)});
  s += "KV cache (1 KB = 1000 B)\n" + kv.Render("  ") + "\n";

  Table p("ll");
  p.Row({"total", fmt::format("{} ({})", Billions(a.params.total), Grouped(a.params.total))});
  p.Row({"activated per token",
         fmt::format("{} ({} with the input embedding)", Billions(a.params.activated),
                     Billions(a.params.activated_with_embedding))});
  if (a.mtp_modules > 0) {
    p.Row({"MTP modules", fmt::format("{} as stored = block {} + eh_proj {} + norms {} + "
                                      "embedding copy {} + head copy {}",
                                      Billions(r.mtp.stored), Billions(r.mtp.block),
                                      Billions(r.mtp.projection), Grouped(r.mtp.norms),
                                      Billions(r.mtp.embedding_copy), Billions(r.mtp.head_copy))});
  }
  s += "Parameters (lm_head included; input embedding excluded from activated; MTP separate)\n" +
       p.Render("  ") + "\n";

  Table w("lrrl");
  w.Row({"format", "total", "read per token", "layout"});
  for (const auto& [f, b] : r.weights) {
    const bool stored = f == StoredWeightFormat(a);
    w.Row({std::string(WeightFormatName(f)) + (stored ? " (stored)" : ""), DecimalBytes(b.total),
           DecimalBytes(b.per_token), DescribeWeightFormat(f, a, o.group_size)});
  }
  s += "Weights (main model; read per token = activated weights + one embedding row)\n" +
       w.Render("  ") + "\n";

  Table t("ll");
  t.Row({"exact", fmt::format("{} GFLOPs = 6 x {} activated ({}) + 6 x {} layers x {} heads x ({} "
                              "+ {}) x {} ({})",
                              Giga(r.train.total), Billions(a.params.activated),
                              Giga(r.train.weights), a.layers, a.heads, a.qk_head_dim, a.v_head_dim,
                              r.train.attended, Giga(r.train.attention))});
  t.Row({"paper's approximation",
         fmt::format("{} GFLOPs = 72 x {} x {}^2 + 6 x {} x {} (dense rule of thumb, no attention)",
                     Giga(r.train.paper_dense_approximation), a.layers, a.hidden, a.vocab,
                     a.hidden)});
  s += fmt::format("Training compute per token (sequence {})\n", Grouped(o.seq_len)) +
       t.Render("  ") + "\n";

  Table d("ll");
  d.Row({"standard count",
         fmt::format("{} GFLOPs = 2 x {} activated ({}) + 2 x {} x {} x ({} + {}) x {} ({})",
                     Giga(r.decode.total), Billions(a.params.activated), Giga(r.decode.weights),
                     a.layers, a.heads, a.qk_head_dim, a.v_head_dim, r.decode.attended,
                     Giga(r.decode.attention))});
  if (a.attention == AttentionKind::kMla) {
    d.Row({"MLA absorbed",
           fmt::format("{} GFLOPs: attention 2 x {} x {} x (2 x {} + {}) x {} ({})",
                       Giga(r.decode.total_absorbed), a.layers, a.heads, a.kv_lora_rank,
                       a.qk_rope_head_dim, r.decode.attended, Giga(r.decode.attention_absorbed))});
  }
  s += fmt::format("Decode compute per token (context {})\n", Grouped(o.context)) + d.Render("  ") +
       "\n";

  if (a.mtp_modules > 0) {
    s += fmt::format(
        "MTP speculative decoding (acceptance {:.2f}, draft cost {:.4f} of a step{})\n"
        "  {:.3f} tokens per step / step cost {:.4f} = {:.2f}x tokens per second\n\n",
        o.mtp_acceptance, r.draft_cost,
        r.draft_cost_estimated ? ", estimated from activated parameters" : "",
        r.mtp_speedup.tokens_per_step, r.mtp_speedup.step_cost, r.mtp_speedup.speedup);
  }
  if (r.bound) {
    const DecodeBound& b = *r.bound;
    s += fmt::format("Decode bound, one sequence on {} ({})\n", b.machine.name,
                     b.machine.description.empty() ? "given" : b.machine.description);
    s += fmt::format(
        "  memory   {} weights ({}) + {} KV ({} tokens, {} B per value) = {} per token; "
        "{} GB/s -> {:.1f} tokens/s\n",
        DecimalBytes(b.weight_bytes), WeightFormatName(b.weights), DecimalBytes(b.kv_bytes),
        Grouped(KvCachedTokens(a, b.context)), b.kv_bytes_per_value, DecimalBytes(b.bytes),
        b.machine.bandwidth_gbs, b.memory_tokens_per_s);
    if (b.machine.tflops > 0) {
      s += fmt::format("  compute  {} GFLOPs per token; {} TFLOPS -> {:.1f} tokens/s\n",
                       Giga(b.flops), b.machine.tflops, b.compute_tokens_per_s);
    }
    s += fmt::format("  bound    {:.1f} tokens/s ({}-bound)\n\n", b.tokens_per_s, b.bound_by);
  }
  return s;
}

// ---- text: several configs side by side ------------------------------------------------------

std::string CompareText(const std::vector<ConfigReport>& rs, const AnalyzeOptions& o) {
  Table t;
  auto row = [&](std::string label, auto cell) {
    std::vector<std::string> cells = {std::move(label)};
    for (const ConfigReport& r : rs) cells.push_back(cell(r));
    t.Row(std::move(cells));
  };
  row("", [](const ConfigReport& r) { return r.arch->name; });
  row("model_type", [](const ConfigReport& r) { return r.arch->model_type; });
  row("attention", [](const ConfigReport& r) { return r.arch->AttentionLabel(); });
  row("layers", [](const ConfigReport& r) { return LayersText(*r.arch); });
  row("KV cache per token, bf16 (B)", [](const ConfigReport& r) { return Grouped(r.kv_bf16()); });
  const double base = static_cast<double>(rs.front().kv_bf16());
  row("  vs " + rs.front().arch->name, [&](const ConfigReport& r) {
    return fmt::format("{:.2f}x", static_cast<double>(r.kv_bf16()) / base);
  });
  row(fmt::format("KV cache at {} tokens x {}, bf16", Grouped(o.context), o.batch),
      [](const ConfigReport& r) { return DecimalBytes(Lookup(r.kv_at_context, "bf16")); });
  row("parameters total", [](const ConfigReport& r) { return Billions(r.arch->params.total); });
  row("parameters activated",
      [](const ConfigReport& r) { return Billions(r.arch->params.activated); });
  row("  with input embedding",
      [](const ConfigReport& r) { return Billions(r.arch->params.activated_with_embedding); });
  row("weights as stored", [](const ConfigReport& r) {
    const WeightFormat f = StoredWeightFormat(*r.arch);
    for (const auto& [g, b] : r.weights) {
      if (g == f) return fmt::format("{} {}", DecimalBytes(b.total), WeightFormatName(f));
    }
    return std::string();
  });
  row(fmt::format("training GFLOPs/token (seq {})", o.seq_len),
      [](const ConfigReport& r) { return Giga(r.train.total); });
  row("  paper's approx. 72LD^2+6VD",
      [](const ConfigReport& r) { return Giga(r.train.paper_dense_approximation); });
  row(fmt::format("decode GFLOPs/token (context {})", o.context),
      [](const ConfigReport& r) { return Giga(r.decode.total); });
  const bool any_mtp = std::any_of(rs.begin(), rs.end(),
                                   [](const ConfigReport& r) { return r.arch->mtp_modules > 0; });
  if (any_mtp) {
    row(fmt::format("MTP speedup (acceptance {:.2f})", o.mtp_acceptance),
        [](const ConfigReport& r) {
          return r.arch->mtp_modules > 0 ? fmt::format("{:.2f}x", r.mtp_speedup.speedup)
                                         : std::string("-");
        });
  }
  if (o.machine) {
    row(fmt::format("decode tokens/s on {}", o.machine->name), [](const ConfigReport& r) {
      return fmt::format("{:.1f} ({})", r.bound->tokens_per_s, r.bound->bound_by);
    });
  }
  std::string s = t.Render("");
  s += "\nParameters: " + std::string(kParamsConvention) +
       ".\nTraining FLOPs: 6 x activated + causal attention 6 x layers x heads x (qk + v) x "
       "seq/2; the paper's approximation is shown for comparison only.\n";
  return s;
}

}  // namespace

// ---- formatting -------------------------------------------------------------------------------

std::string Grouped(int64_t n) {
  const std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

std::string Billions(double n) {
  if (std::fabs(n) >= 1e9) return fmt::format("{:.2f} B", n / 1e9);
  if (std::fabs(n) >= 1e6) return fmt::format("{:.2f} M", n / 1e6);
  return Grouped(static_cast<int64_t>(std::llround(n)));
}

std::string DecimalBytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
  int u = 0;
  while (std::fabs(bytes) >= 1000 && u < 5) {
    bytes /= 1000;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[u]);
}

// ---- analyze ----------------------------------------------------------------------------------

void ValidateAnalyzeOptions(const AnalyzeOptions& o) {
  constexpr int64_t kMaxTokens = int64_t{1} << 40;
  if (o.seq_len < 1 || o.seq_len > kMaxTokens) {
    Fail("--seq-len must be in [1, 2^40], got {}", o.seq_len);
  }
  if (o.context < 1 || o.context > kMaxTokens) {
    Fail("--context must be in [1, 2^40], got {}", o.context);
  }
  if (o.batch < 1 || o.batch > (1 << 24)) Fail("--batch must be in [1, 2^24], got {}", o.batch);
  if (o.group_size < 1 || o.group_size > (1 << 20)) {
    Fail("--group-size must be in [1, 2^20], got {}", o.group_size);
  }
  CacheDtypeBytes(o.kv_dtype);
  MtpSpeedup({o.mtp_acceptance, 1, o.mtp_draft_cost.value_or(0)});
}

int64_t ConfigReport::kv_bf16() const { return Lookup(kv_per_token, "bf16"); }

ConfigReport BuildReport(const Arch& a, const AnalyzeOptions& o) {
  ValidateAnalyzeOptions(o);
  ConfigReport r;
  r.arch = &a;
  for (const std::string& dtype : CacheDtypeNames()) {
    const int64_t bytes = CacheDtypeBytes(dtype);
    r.kv_per_token.emplace_back(dtype, KvCacheBytesPerToken(a, bytes));
    r.kv_at_context.emplace_back(dtype, KvCacheBytes(a, bytes, o.context, o.batch));
  }
  r.kv_cached_tokens = KvCachedTokens(a, o.context);
  r.mtp_kv_per_token_bf16 = MtpKvCacheBytesPerToken(a, 2);
  for (WeightFormat f : AllWeightFormats()) {
    r.weights.emplace_back(f, CountWeightBytes(a, f, o.group_size));
  }
  r.mtp = CountMtpParams(a);
  if (a.mtp_modules > 0) {
    r.draft_cost_estimated = !o.mtp_draft_cost.has_value();
    r.draft_cost = o.mtp_draft_cost.value_or(MtpDraftCostEstimate(a));
    r.mtp_speedup = MtpSpeedup({o.mtp_acceptance, a.mtp_modules, r.draft_cost});
  }
  r.train = TrainingFlopsPerToken(a, o.seq_len);
  r.decode = DecodeFlopsPerToken(a, o.context);
  if (o.machine) {
    r.bound = DecodeBoundFor(a, *o.machine, o.weights.value_or(StoredWeightFormat(a)), o.group_size,
                             CacheDtypeBytes(o.kv_dtype), o.context);
  }
  return r;
}

Json AnalyzeJson(const std::vector<Arch>& archs, const AnalyzeOptions& o) {
  Json j;
  j["settings"] = {{"seq_len", o.seq_len},
                   {"context", o.context},
                   {"batch", o.batch},
                   {"group_size", o.group_size},
                   {"mtp_acceptance", o.mtp_acceptance}};
  j["configs"] = Json::array();
  for (const Arch& a : archs) j["configs"].push_back(ReportJson(BuildReport(a, o), o));
  return j;
}

std::string AnalyzeText(const std::vector<Arch>& archs, const AnalyzeOptions& o) {
  std::vector<ConfigReport> reports;
  for (const Arch& a : archs) reports.push_back(BuildReport(a, o));
  if (reports.size() == 1) return DetailText(reports[0], o);
  return CompareText(reports, o);
}

// ---- tpot -------------------------------------------------------------------------------------

Json TpotJson(const Arch* arch, const std::string& interconnect, const EpOptions& o,
              const EpResult& r) {
  Json j;
  j["config"] = arch ? Json(arch->source) : Json();
  j["interconnect"] = interconnect;
  j["bandwidth_gbs"] = o.bandwidth_gbs;
  j["hidden"] = o.hidden;
  j["tokens_per_device"] = o.tokens_per_device;
  j["fan_out"] = o.fan_out;
  j["dispatch_bytes"] = o.dispatch_bytes;
  j["combine_bytes"] = o.combine_bytes;
  j["micro_batches"] = o.micro_batches;
  j["layers"] = o.layers;
  j["bytes_per_round"] = r.bytes_per_round;
  j["comm_us_per_round"] = r.comm_us_per_round;
  j["us_per_layer"] = r.us_per_layer;
  j["tpot_ms"] = r.tpot_ms;
  j["tokens_per_s"] = r.tokens_per_s;
  j["formula"] =
      "comm per round = (dispatch_bytes + combine_bytes) * tokens_per_device * fan_out * hidden / "
      "bandwidth; TPOT = layers * micro_batches * comm per round";
  return j;
}

std::string TpotText(const Arch* arch, const std::string& interconnect, const EpOptions& o,
                     const EpResult& r) {
  std::string s = fmt::format("Expert-parallel decode{} over {} ({} GB/s)\n",
                              arch ? ", " + arch->name : "", interconnect, o.bandwidth_gbs);
  Table t("ll");
  t.Row(
      {"per round",
       fmt::format("({} + {}) B x {} tokens x {} experts x {} hidden = {} B / {} GB/s = {:.2f} us",
                   o.dispatch_bytes, o.combine_bytes, o.tokens_per_device, o.fan_out, o.hidden,
                   Grouped(static_cast<int64_t>(std::llround(r.bytes_per_round))), o.bandwidth_gbs,
                   r.comm_us_per_round)});
  t.Row({"per layer", fmt::format("{} micro-batches x {:.2f} us = {:.2f} us", o.micro_batches,
                                  r.comm_us_per_round, r.us_per_layer)});
  t.Row({"TPOT",
         fmt::format("{} layers x {:.2f} us = {:.2f} ms", o.layers, r.us_per_layer, r.tpot_ms)});
  t.Row({"tokens/s", fmt::format("1 / TPOT = {:.1f} per sequence", r.tokens_per_s)});
  s += t.Render("  ");
  if (arch && o.hidden != static_cast<double>(arch->hidden)) {
    s += fmt::format("  (hidden {} given; the config's hidden_size is {})\n", o.hidden,
                     arch->hidden);
  }
  return s;
}

// ---- mtp --------------------------------------------------------------------------------------

Json MtpJson(const Arch* arch, const MtpOptions& o, bool draft_cost_estimated, const MtpResult& r) {
  return {{"config", arch ? Json(arch->source) : Json()},
          {"acceptance", o.acceptance},
          {"depth", o.depth},
          {"draft_cost", o.draft_cost},
          {"draft_cost_estimated", draft_cost_estimated},
          {"tokens_per_step", r.tokens_per_step},
          {"step_cost", r.step_cost},
          {"speedup", r.speedup}};
}

std::string MtpText(const Arch* arch, const MtpOptions& o, bool draft_cost_estimated,
                    const MtpResult& r) {
  std::string s = fmt::format("MTP speculative decoding{}\n", arch ? ", " + arch->name : "");
  Table t("ll");
  t.Row({"tokens per step", fmt::format("1 + a + ... + a^{} with a = {:.3f}: {:.4f}", o.depth,
                                        o.acceptance, r.tokens_per_step)});
  t.Row(
      {"step cost", fmt::format("1 + {} x {:.4f} (draft cost{}) = {:.4f}", o.depth, o.draft_cost,
                                draft_cost_estimated ? ", estimated from activated parameters" : "",
                                r.step_cost)});
  t.Row({"speedup", fmt::format("{:.4f} / {:.4f} = {:.3f}x tokens per second", r.tokens_per_step,
                                r.step_cost, r.speedup)});
  return s + t.Render("  ");
}

// ---- network ----------------------------------------------------------------------------------

Json NetworkJson(const NetworkOptions& o, const std::vector<Topology>& ts, const Prices& p) {
  Json j;
  j["radix"] = o.radix;
  j["links_counted"] = "switch-to-switch";
  Json topologies;
  for (const Topology& t : ts) {
    Json x = {{"name", t.name},           {"parameters", t.parameters_json},
              {"endpoints", t.endpoints}, {"switches", t.switches},
              {"links", t.links},         {"ports_per_switch", t.ports_per_switch},
              {"notes", t.notes}};
    if (p.any()) {
      const double cost = NetworkCost(t, p);
      x["cost_usd"] = cost;
      x["cost_per_endpoint_usd"] = cost / static_cast<double>(t.endpoints);
    }
    topologies[t.key] = x;
  }
  j["topologies"] = topologies;
  if (p.any()) {
    j["prices_usd"] = {
        {"switch", p.switch_usd}, {"link", p.link_usd}, {"endpoint", p.endpoint_usd}};
  }
  return j;
}

std::string NetworkText(const NetworkOptions& o, const std::vector<Topology>& ts, const Prices& p) {
  Table t;
  auto row = [&](std::string label, auto cell) {
    std::vector<std::string> cells = {std::move(label)};
    for (const Topology& x : ts) cells.push_back(cell(x));
    t.Row(std::move(cells));
  };
  row("", [](const Topology& x) { return x.name; });
  row("endpoints", [](const Topology& x) { return Grouped(x.endpoints); });
  row("switches", [](const Topology& x) { return Grouped(x.switches); });
  row("links (switch-switch)", [](const Topology& x) { return Grouped(x.links); });
  row("ports used per switch", [](const Topology& x) { return Grouped(x.ports_per_switch); });
  if (p.any()) {
    row("cost",
        [&](const Topology& x) { return fmt::format("${:.2f} M", NetworkCost(x, p) / 1e6); });
    row("cost per endpoint", [&](const Topology& x) {
      return fmt::format("${:.2f} k", NetworkCost(x, p) / static_cast<double>(x.endpoints) / 1e3);
    });
  }
  std::string s = fmt::format("Network topologies with {}-port switches\n", o.radix);
  s += t.Render("  ");
  s += "\n";
  for (const Topology& x : ts) {
    s += fmt::format("  {}: {}\n", x.name, x.parameters);
    for (const std::string& n : x.notes) s += fmt::format("    note: {}\n", n);
  }
  if (!p.any()) {
    s += "  (cost: give --switch-price, --link-price and/or --endpoint-price in dollars)\n";
  }
  return s;
}

}  // namespace dsv3::analysis
