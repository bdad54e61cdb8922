#include "tools/perplexity.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "core/json.h"
#include "core/progress.h"
#include "core/unicode.h"
#include "runtime/perplexity.h"
#include "tools/cli_options.h"
#include "tools/commands.h"

namespace dsv3::cli {

struct PerplexityCommand::Args {
  CLI::App* cmd = nullptr;
  std::string model_dir, file, tokenizer;
  int64_t ctx = 512, chunks = 0;
  bool json = false, no_progress = false;
  KvCacheType kv_cache = KvCacheType::kF32;
  kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32;
  LoadOptions load;
};

PerplexityCommand::PerplexityCommand(CLI::App& app) : args_(std::make_unique<Args>()) {
  Args& a = *args_;
  a.cmd = app.add_subcommand(
      "perplexity",
      "mean cross-entropy (nats/token) and perplexity of a text file, in windows of -c tokens");
  a.cmd->add_option("-m,--model", a.model_dir, "model folder")->required();
  a.cmd->add_option("-f,--file", a.file, "text file (UTF-8), tokenized without BOS/EOS")
      ->required();
  a.cmd->add_option("-c,--ctx-size", a.ctx,
                    "positions scored per window; windows of c + 1 tokens, stride c, each from an "
                    "empty cache (default 512)");
  a.cmd->add_option("--chunks", a.chunks, "score only the first N windows (default: all)");
  a.cmd->add_option("--tokenizer", a.tokenizer,
                    "tokenizer.json or its folder (default: the model folder's)");
  a.cmd->add_flag("--json", a.json, "print the result as one JSON object");
  a.cmd->add_flag("--no-progress", a.no_progress, "do not show progress");
  AddKvCacheOption(a.cmd, &a.kv_cache);
  AddMatMulOption(a.cmd, &a.matmul);
  AddLmHeadOption(a.cmd, &a.load);
}

PerplexityCommand::~PerplexityCommand() = default;

CLI::App* PerplexityCommand::command() const { return args_->cmd; }

bool PerplexityCommand::selected() const { return args_->cmd->parsed(); }

int PerplexityCommand::Run() const {
  const Args& a = *args_;
  if (a.ctx < 1) Fail("-c/--ctx-size must be at least 1, not {}", a.ctx);
  if (a.chunks < 0) Fail("--chunks must be 0 (all) or more, not {}", a.chunks);
  const std::string text = ReadFileLimited(a.file, size_t{4} << 30);
  if (text.empty()) Fail("{}: the text file is empty", a.file);
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string::npos)
    Fail("{}: not UTF-8 text (invalid byte sequence at byte offset {})", a.file, bad);
  const std::unique_ptr<Tokenizer> tok = LoadTokenizer(a.tokenizer, a.model_dir);
  const std::unique_ptr<Model> m = LoadModel(a.model_dir, /*quiet=*/a.json, a.matmul, a.load);
  CheckVocab(*tok, m->config());
  std::vector<int32_t> ids;
  tok->EncodeTo(text, &ids);
  const int64_t N = static_cast<int64_t>(ids.size());
  if (a.ctx + 1 > m->config().max_position_embeddings) {
    Fail("-c {}: a window of {} + 1 tokens exceeds {}/config.json max_position_embeddings ({})",
         a.ctx, a.ctx, a.model_dir, m->config().max_position_embeddings);
  }
  if (N < a.ctx + 1) {
    Fail("{}: {} tokens, fewer than one window of {} + 1; use a smaller -c", a.file, N, a.ctx);
  }
  int64_t windows = (N - 1) / a.ctx;
  if (a.chunks > 0) windows = std::min(windows, a.chunks);
  if (!a.json) {
    std::fprintf(stderr, "dsv3: %s: %lld tokens; %lld windows of %lld + 1\n", a.file.c_str(),
                 static_cast<long long>(N), static_cast<long long>(windows),
                 static_cast<long long>(a.ctx));
  }

  PerplexityOptions o;
  o.ctx = a.ctx;
  o.max_windows = windows;
  o.context.kv_cache = a.kv_cache;
  o.context.matmul = a.matmul;
  Progress progress("perplexity", static_cast<uint64_t>(windows), !a.no_progress, "windows");
  const PerplexityResult r = Perplexity(*m, ids, o, [&](int64_t, double) { progress.Add(1); });
  progress.Finish();

  if (a.json) {
    Json j{{"file", a.file},
           {"tokens", r.tokens},
           {"ctx", a.ctx},
           {"windows", r.windows},
           {"scored_tokens", r.scored},
           {"mean_ce", r.mean_ce},
           {"mean_ce_stderr", r.stderr_ce},
           {"perplexity", r.perplexity()},
           {"seconds", r.seconds},
           {"tokens_per_second", r.seconds > 0 ? r.scored / r.seconds : 0.0}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  // Running perplexity after each window, as llama.cpp prints it, then the estimate.
  double sum = 0;
  for (int64_t w = 0; w < r.windows; ++w) {
    sum += r.window_ce[w];
    std::printf("[%lld]%.4f,", static_cast<long long>(w + 1), std::exp(sum / (w + 1)));
  }
  std::printf("\n");
  std::printf("mean cross-entropy = %.5f +/- %.5f nats/token over %lld tokens\n", r.mean_ce,
              r.stderr_ce, static_cast<long long>(r.scored));
  std::printf("Final estimate: PPL = %.4f +/- %.4f\n", r.perplexity(),
              r.perplexity() * r.stderr_ce);
  std::fprintf(stderr, "dsv3: %.2f s, %.0f tokens/s\n", r.seconds,
               r.seconds > 0 ? r.scored / r.seconds : 0.0);
  return 0;
}

}  // namespace dsv3::cli
