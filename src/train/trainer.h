// The training loop behind `dsv3 train`: data, schedule, steps (forward, backward, AdamW, the
// routing-bias update), validation, logs, checkpoints and the resumable state.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/json.h"
#include "train/linear.h"
#include "train/train_model.h"

namespace dsv3::train {

struct TrainOptions {
  std::string config;     // config.json of the model to train (random initialization)
  std::string data;       // training text (UTF-8)
  std::string valid;      // validation text; "" for none
  std::string tokenizer;  // tokenizer.json or its folder
  std::string out_dir;    // the checkpoint, train_state.safetensors, train_log.jsonl
  std::string resume;     // a previous out_dir to continue from; "" for a fresh run
  Precision precision = Precision::kFP8;
  int64_t steps = 1000, batch = 8, seq = 256;
  double lr = 3e-3, min_lr_ratio = 0.1;
  int64_t warmup = 100;
  std::string schedule = "cosine";  // cosine | wsd (constant, then linear decay over the last 20%)
  uint64_t seed = 0;
  int64_t eval_every = 0;  // 0: validate at the end only
  int64_t save_every = 0;  // 0: save at the end only
  int64_t log_every = 1;   // progress line every N steps (JSONL log: every step)
  // Stop after this step (saving everything, as at the end) although the schedule runs to
  // `steps`: a long run split into sessions, continued with resume. 0: run to `steps`.
  int64_t stop_after = 0;
  std::string save_dtype = "fp8";  // fp8 | bf16 | f32
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, clip_norm = 1.0;
  double init_std = 0;  // 0: config.json's initializer_range (0.02 if absent)
  double bias_gamma = 0.001;
  Objective objective;
  bool progress = true;  // progress lines on stderr
};

struct TrainSummary {
  int64_t steps = 0;
  Losses last;           // losses of the last step
  double valid_ce = -1;  // last validation (-1: none)
  double valid_mtp_ce = -1;
  double tokens_per_s = 0, gflops = 0;
  double seconds = 0;
};

// Learning rate at `step` (0-based) of `steps`: linear warmup to lr, then the schedule down to
// lr * min_lr_ratio at the last step.
double LearningRate(const TrainOptions& o, int64_t step);

// Runs the training; throws dsv3::Error on bad input (before any step) or on a failed save.
TrainSummary Train(const TrainOptions& options);

// `dsv3 train --bench`: training steps of a config (random weights, random tokens, the full
// objective and optimizer) timed per phase after `warmup` untimed steps.
struct BenchResult {
  int64_t steps = 0, tokens_per_step = 0;
  double seconds = 0;                                                  // timed steps
  double forward_s = 0, backward_s = 0, optimizer_s = 0, quant_s = 0;  // summed over steps
  double flops_per_step = 0;
  double tokens_per_s() const { return tokens_per_step * steps / seconds; }
  double gflops() const { return flops_per_step * steps / seconds / 1e9; }
};
BenchResult Benchmark(const Config& config, Precision precision, int64_t batch, int64_t seq,
                      int64_t steps, int64_t warmup, uint64_t seed);

}  // namespace dsv3::train
