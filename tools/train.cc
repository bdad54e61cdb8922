#include "tools/train.h"

#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <vector>

#include "analysis/plot.h"
#include "core/error.h"
#include "core/json.h"
#include "core/parallel.h"
#include "kernels/targets.h"
#include "model/config.h"
#include "train/trainer.h"

namespace dsv3::cli {

struct TrainCommand::Args {
  train::TrainOptions o;
  std::string precision = "fp8";
  std::vector<std::string> plot, labels;  // --plot LOG.jsonl ..., --label NAME ...
  bool bench = false, json = false;
  int64_t bench_warmup = 2;
};

TrainCommand::TrainCommand(CLI::App& app) : args_(std::make_unique<Args>()) {
  train::TrainOptions& o = args_->o;
  cmd_ = app.add_subcommand("train",
                            "train a DeepSeek-V3-architecture model (fp32, bf16 or the FP8 recipe) "
                            "on a text file; writes a Hugging Face checkpoint + training state");
  // Not ->required(): --plot needs none of them, and train::Train() names what a run lacks.
  cmd_->add_option("--config", o.config, "config.json of the model (random initialization)");
  cmd_->add_option("--data", o.data, "training text (UTF-8)");
  cmd_->add_option("--valid", o.valid, "validation text (UTF-8)");
  cmd_->add_option("--tokenizer", o.tokenizer, "tokenizer.json or its folder");
  cmd_->add_option("-o,--output", o.out_dir,
                   "output folder: checkpoint, state, JSONL log (with --plot: the .svg or .png)");
  cmd_->add_flag("--bench", args_->bench,
                 "instead of training: time training steps of --config (random weights and "
                 "tokens) per phase at --precision, --batch, --seq, for --steps (default 5)");
  cmd_->add_option("--bench-warmup", args_->bench_warmup,
                   "--bench: untimed steps first (default 2)");
  cmd_->add_flag("--json", args_->json, "--bench: one JSON object");
  cmd_->add_option("--plot", args_->plot,
                   "instead of training: plot the loss curves of these train_log.jsonl (repeat "
                   "for several runs) to -o FILE.svg/.png");
  cmd_->add_option("--label", args_->labels,
                   "legend of each --plot log, in order (default: the log's folder name)");
  cmd_->add_option("--precision", args_->precision,
                   "fp8 (DeepSeek-V3's recipe, default) | bf16 | fp32")
      ->check(CLI::IsMember({"fp8", "bf16", "fp32"}));
  cmd_->add_option("--steps", o.steps, "optimizer steps (default 1000)");
  cmd_->add_option("--batch", o.batch, "sequences per step (default 8)");
  cmd_->add_option("--seq", o.seq, "tokens per sequence (default 256)");
  cmd_->add_option("--lr", o.lr, "peak learning rate (default 3e-3)");
  cmd_->add_option("--min-lr-ratio", o.min_lr_ratio, "final lr / peak lr (default 0.1)");
  cmd_->add_option("--warmup", o.warmup, "linear warmup steps (default 100)");
  cmd_->add_option("--schedule", o.schedule, "cosine (default) | wsd")
      ->check(CLI::IsMember({"cosine", "wsd"}));
  cmd_->add_option("--seed", o.seed, "initialization and data-order seed (default 0)");
  cmd_->add_option("--resume", o.resume, "continue from this output folder's training state");
  cmd_->add_option("--eval-every", o.eval_every, "validate every N steps (default: at the end)");
  cmd_->add_option("--save-every", o.save_every, "save every N steps (default: at the end)");
  cmd_->add_option("--stop-after", o.stop_after,
                   "stop (and save) after this step; the schedule still runs to --steps and "
                   "--resume continues the run");
  cmd_->add_option("--log-every", o.log_every, "progress line every N steps (default 1)");
  cmd_->add_option("--save-dtype", o.save_dtype, "checkpoint dtype: fp8 (default) | bf16 | f32")
      ->check(CLI::IsMember({"fp8", "bf16", "f32"}));
  cmd_->add_option("--weight-decay", o.weight_decay, "AdamW decoupled decay (default 0.1)");
  cmd_->add_option("--beta1", o.beta1, "AdamW beta1 (default 0.9)");
  cmd_->add_option("--beta2", o.beta2, "AdamW beta2 (default 0.95)");
  cmd_->add_option("--clip", o.clip_norm, "clip the gradient norm to this; 0: off (default 1)");
  cmd_->add_option("--init-std", o.init_std,
                   "std of the random initialization (default: initializer_range, else 0.02)");
  cmd_->add_option("--mtp-lambda", o.objective.mtp_lambda, "MTP loss weight (default 0.3)");
  cmd_->add_option("--balance-alpha", o.objective.balance_alpha,
                   "sequence-wise balance loss factor (default 1e-4)");
  cmd_->add_option("--bias-gamma", o.bias_gamma,
                   "aux-loss-free routing bias update speed; 0: off (default 0.001)");
  cmd_->add_flag(
      "--no-progress", [this](int64_t) { args_->o.progress = false; }, "no progress lines");
}

TrainCommand::~TrainCommand() = default;

// Options other than `allowed` that the command line set.
static std::string ForeignOption(const CLI::App* cmd, std::initializer_list<std::string> allowed) {
  for (const CLI::Option* opt : cmd->get_options()) {
    const std::string name = opt->get_name();
    if (opt->count() > 0 && std::find(allowed.begin(), allowed.end(), name) == allowed.end())
      return name;
  }
  return "";
}

int TrainCommand::Run() const {
  if (args_->bench) {
    const std::string foreign =
        ForeignOption(cmd_, {"--bench", "--config", "--precision", "--batch", "--seq", "--steps",
                             "--bench-warmup", "--seed", "--json", "--threads", "--simd"});
    if (!foreign.empty()) Fail("train --bench: {} is not a benchmark option", foreign);
    if (args_->o.config.empty()) Fail("train --bench: --config is required");
    const Config config =
        Config::FromJson(ReadJsonFile(args_->o.config, kMaxConfigJsonBytes), args_->o.config);
    const train::Precision precision = *train::PrecisionFromName(args_->precision);
    const int64_t steps = cmd_->get_option("--steps")->count() > 0 ? args_->o.steps : 5;
    const train::BenchResult r = train::Benchmark(config, precision, args_->o.batch, args_->o.seq,
                                                  steps, args_->bench_warmup, args_->o.seed);
    const double n = static_cast<double>(r.steps);
    const Json phases{{"forward", r.forward_s / n},
                      {"backward", r.backward_s / n},
                      {"optimizer", r.optimizer_s / n},
                      {"quantization", r.quant_s / n}};
    if (args_->json) {
      const Json j{{"engine", "dsv3"},
                   {"config", args_->o.config},
                   {"precision", train::PrecisionName(precision)},
                   {"batch", args_->o.batch},
                   {"seq", args_->o.seq},
                   {"steps", r.steps},
                   {"threads", NumThreads()},
                   {"simd", kernels::ActiveTarget()},
                   {"train_flops_per_token", r.flops_per_step / r.tokens_per_step},
                   {"step_s", r.seconds / n},
                   {"tokens_per_s", r.tokens_per_s()},
                   {"gflops", r.gflops()},
                   {"phase_s", phases}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf(
          "dsv3 train --bench %s, %s, batch %lld x %lld, %d threads (%s): %.0f tokens/s, %.1f "
          "GFLOP/s; per step %.1f ms: forward %.1f, backward %.1f (quantization %.1f in all), "
          "optimizer %.1f\n",
          args_->o.config.c_str(), train::PrecisionName(precision),
          static_cast<long long>(args_->o.batch), static_cast<long long>(args_->o.seq),
          NumThreads(), kernels::ActiveTarget().c_str(), r.tokens_per_s(), r.gflops(),
          1e3 * r.seconds / n, 1e3 * r.forward_s / n, 1e3 * r.backward_s / n, 1e3 * r.quant_s / n,
          1e3 * r.optimizer_s / n);
    }
    return 0;
  }
  if (!args_->plot.empty()) {
    if (args_->o.out_dir.empty()) Fail("train --plot: -o FILE.svg (or .png) is required");
    const std::string foreign = ForeignOption(cmd_, {"--plot", "--label", "--output"});
    if (!foreign.empty())
      Fail("train --plot makes a plot from logs: {} is a training option", foreign);
    analysis::PlotLossCurves(args_->plot, args_->labels, args_->o.out_dir);
    std::fprintf(stderr, "dsv3: wrote %s\n", args_->o.out_dir.c_str());
    return 0;
  }
  if (!args_->labels.empty()) Fail("train: --label names the logs of --plot; give --plot");
  train::TrainOptions o = args_->o;
  o.precision = *train::PrecisionFromName(args_->precision);
  const train::TrainSummary s = train::Train(o);
  std::printf("steps %lld  loss %.4f  ce %.4f  mtp_ce %.4f  balance %.5f",
              static_cast<long long>(s.steps), s.last.total, s.last.ce, s.last.mtp_ce,
              s.last.balance);
  if (s.valid_ce >= 0) std::printf("  valid_ce %.4f", s.valid_ce);
  std::printf("  tokens/s %.0f  GFLOP/s %.1f\n", s.tokens_per_s, s.gflops);
  return 0;
}

}  // namespace dsv3::cli
