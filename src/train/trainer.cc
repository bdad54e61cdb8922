#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numbers>
#include <sstream>

#include "core/error.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/optimizer.h"

namespace dsv3::train {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string Duration(double s) {
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, t / 60 % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

void Check(const TrainOptions& o) {
  if (o.config.empty()) Fail("train: --config is required");
  if (o.data.empty()) Fail("train: --data is required");
  if (o.tokenizer.empty()) Fail("train: --tokenizer is required");
  if (o.out_dir.empty()) Fail("train: -o OUT_DIR is required");
  if (o.steps < 1) Fail("train: --steps must be >= 1, got {}", o.steps);
  if (o.batch < 1) Fail("train: --batch must be >= 1, got {}", o.batch);
  if (o.seq < 2) Fail("train: --seq must be >= 2, got {}", o.seq);
  if (!(o.lr > 0)) Fail("train: --lr must be > 0, got {}", o.lr);
  if (o.warmup < 0) Fail("train: --warmup must be >= 0, got {}", o.warmup);
  if (o.schedule != "cosine" && o.schedule != "wsd")
    Fail("train: --schedule must be cosine or wsd, got '{}'", o.schedule);
  if (o.save_dtype != "fp8" && o.save_dtype != "bf16" && o.save_dtype != "f32")
    Fail("train: --save-dtype must be fp8, bf16 or f32, got '{}'", o.save_dtype);
  if (o.min_lr_ratio < 0 || o.min_lr_ratio > 1)
    Fail("train: --min-lr-ratio must be in [0, 1], got {}", o.min_lr_ratio);
  if (o.stop_after < 0 || o.stop_after > o.steps)
    Fail("train: --stop-after must be in [0, --steps], got {}", o.stop_after);
  if (o.eval_every < 0 || o.save_every < 0 || o.log_every < 1)
    Fail("train: --eval-every and --save-every must be >= 0, --log-every >= 1");
}

// The fields a resumed run must share with the run that wrote the state: anything that changes
// which batch a step sees or what a step computes.
Json RunIdentity(const TrainOptions& o, const TokenData& data) {
  return Json{{"precision", PrecisionName(o.precision)},
              {"steps", o.steps},
              {"batch", o.batch},
              {"seq", o.seq},
              {"seed", o.seed},
              {"lr", o.lr},
              {"min_lr_ratio", o.min_lr_ratio},
              {"warmup", o.warmup},
              {"schedule", o.schedule},
              {"weight_decay", o.weight_decay},
              {"beta1", o.beta1},
              {"beta2", o.beta2},
              {"clip_norm", o.clip_norm},
              {"bias_gamma", o.bias_gamma},
              {"mtp_lambda", o.objective.mtp_lambda},
              {"balance_alpha", o.objective.balance_alpha},
              {"data_tokens", data.tokens()}};
}

struct Eval {
  double ce = 0, mtp_ce = 0;
  // Per MoE layer (main layers, then MTP): its Hugging Face index and max / mean expert load over
  // the full validation batches (1 is perfect balance).
  std::vector<int64_t> moe_layers;
  std::vector<double> load_max_over_mean;
};

// Mean cross-entropy over every window of `data`, in order, B windows per forward (the last
// batch padded with window 0, whose rows are not counted).
Eval Validate(TrainModel& model, const TokenData& data, std::vector<int32_t>& tokens) {
  const int64_t B = model.batch(), T = model.seq(), W = data.windows();
  double ce = 0, mtp = 0;
  int64_t counted = 0;
  std::vector<std::vector<int64_t>> load;  // [MoE layers][E]
  for (int64_t w0 = 0; w0 < W; w0 += B) {
    const int64_t n = std::min(B, W - w0);
    for (int64_t b = 0; b < B; ++b) data.Window(b < n ? w0 + b : 0, tokens.data() + b * (T + 1));
    model.Forward(tokens.data());
    if (n == B) {  // a padded batch would count window 0 twice
      const std::vector<MoeLayerStats>& stats = model.moe_stats();
      load.resize(stats.size());
      for (size_t l = 0; l < stats.size(); ++l) {
        load[l].resize(stats[l].load.size());
        for (size_t e = 0; e < stats[l].load.size(); ++e) load[l][e] += stats[l].load[e];
      }
    }
    const std::vector<float>& pc = model.ce_per_position();
    const std::vector<float>& pm = model.mtp_ce_per_position();
    for (int64_t i = 0; i < n * T; ++i) ce += pc[i];
    if (!pm.empty())
      for (int64_t i = 0; i < n * (T - 1); ++i) mtp += pm[i];
    counted += n;
  }
  Eval e;
  e.ce = ce / static_cast<double>(counted * T);
  e.mtp_ce = mtp / static_cast<double>(counted * (T - 1));
  for (size_t l = 0; l < load.size() && !load[l].empty(); ++l) {
    int64_t max = 0, sum = 0;
    for (int64_t x : load[l]) {
      max = std::max(max, x);
      sum += x;
    }
    e.moe_layers.push_back(model.moe_stats()[l].layer);
    e.load_max_over_mean.push_back(
        sum > 0 ? static_cast<double>(max) * static_cast<double>(load[l].size()) / sum : 0.0);
  }
  return e;
}

// train_log.jsonl: one object per line. On resume the lines up to the resumed step are kept.
class Log {
 public:
  Log(const std::string& path, const std::string& resume_path, int64_t keep_through_step)
      : path_(path) {
    if (!resume_path.empty() && std::filesystem::exists(resume_path)) {
      std::ifstream in(resume_path);
      std::string line;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        const Json j = Json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.contains("step")) continue;
        if (j["step"].get<int64_t>() <= keep_through_step) lines_ += line + "\n";
      }
    }
    Flush();
  }
  void Add(const Json& j) { lines_ += j.dump() + "\n"; }
  void Flush() { WriteFileAtomic(path_, lines_); }

 private:
  std::string path_, lines_;
};

}  // namespace

double LearningRate(const TrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  const double min_lr = o.lr * o.min_lr_ratio;
  const int64_t span = std::max<int64_t>(1, o.steps - 1 - o.warmup);
  const double t = std::min(1.0, static_cast<double>(step - o.warmup) / static_cast<double>(span));
  if (o.schedule == "wsd") {
    const double decay_start = 0.8;
    if (t <= decay_start) return o.lr;
    return o.lr + (min_lr - o.lr) * (t - decay_start) / (1 - decay_start);
  }
  return min_lr + 0.5 * (o.lr - min_lr) * (1 + std::cos(std::numbers::pi * t));
}

TrainSummary Train(const TrainOptions& o) {
  Check(o);
  const Config config = Config::FromJson(ReadJsonFile(o.config, kMaxConfigJsonBytes), o.config);
  if (config.max_position_embeddings > 0 && o.seq > config.max_position_embeddings) {
    Fail("train: --seq {} is longer than {}'s max_position_embeddings {}", o.seq, o.config,
         config.max_position_embeddings);
  }
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::Load(o.tokenizer);
  if (tokenizer->vocab_size() > config.vocab_size) {
    Fail("{}: the tokenizer has {} ids but {} has vocab_size {}", tokenizer->source(),
         tokenizer->vocab_size(), o.config, config.vocab_size);
  }
  TokenData data(o.data, *tokenizer, o.seq, config.vocab_size);
  std::unique_ptr<TokenData> valid;
  if (!o.valid.empty())
    valid = std::make_unique<TokenData>(o.valid, *tokenizer, o.seq, config.vocab_size);

  Params params(config);
  AdamWOptions ao;
  ao.beta1 = o.beta1;
  ao.beta2 = o.beta2;
  ao.weight_decay = o.weight_decay;
  ao.clip_norm = o.clip_norm;
  AdamW opt(params, ao);
  const Json identity = RunIdentity(o, data);
  int64_t start = 0;
  if (!o.resume.empty()) {
    const std::string state = o.resume + "/train_state.safetensors";
    const Json meta = LoadState(state, params, opt);
    for (const auto& [key, value] : identity.items()) {
      if (!meta["run"].contains(key) || meta["run"][key] != value) {
        Fail("{}: the state was written by a run with {} = {}, this run has {} = {}", state, key,
             meta["run"].contains(key) ? meta["run"][key].dump() : "(none)", key, value.dump());
      }
    }
    start = meta["step"].get<int64_t>();
    if (start > o.steps)
      Fail("{}: the state is at step {}, beyond --steps {}", state, start, o.steps);
  } else {
    double std = o.init_std;
    if (std <= 0) std = config.raw.value("initializer_range", 0.02);
    params.Init(std, o.seed);
  }
  std::filesystem::create_directories(o.out_dir);
  TrainModel model(params, o.batch, o.seq, o.objective, o.precision);
  std::vector<int32_t> tokens(o.batch * (o.seq + 1));
  Log log(o.out_dir + "/train_log.jsonl", o.resume.empty() ? "" : o.resume + "/train_log.jsonl",
          start);

  SaveOptions so;
  so.dtype = o.save_dtype;
  const std::filesystem::path tok_dir = std::filesystem::is_directory(o.tokenizer)
                                            ? std::filesystem::path(o.tokenizer)
                                            : std::filesystem::path(o.tokenizer).parent_path();
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    if (std::filesystem::exists(tok_dir / f)) so.copy_files.push_back(tok_dir / f);
  }
  auto save = [&](int64_t step) {
    SaveCheckpoint(params, o.out_dir, so);
    SaveState(o.out_dir + "/train_state.safetensors", params, opt,
              Json{{"step", step}, {"run", identity}});
    log.Flush();
  };

  if (o.progress) {
    std::fprintf(stderr,
                 "train: %s, %lld parameters, %s, batch %lld x %lld tokens, %lld steps (%.2f "
                 "epochs of %lld tokens)%s\n",
                 o.config.c_str(), static_cast<long long>(params.total()),
                 PrecisionName(o.precision), static_cast<long long>(o.batch),
                 static_cast<long long>(o.seq), static_cast<long long>(o.steps),
                 data.Epoch(o.steps, o.batch), static_cast<long long>(data.tokens()),
                 start > 0 ? fmt::format(", resuming at step {}", start).c_str() : "");
  }
  TrainSummary summary;
  const Clock::time_point t_start = Clock::now();
  double fwd_s = 0, bwd_s = 0, opt_s = 0, flops = 0;
  const double step_flops =
      TrainFlopsPerToken(config, o.seq) * static_cast<double>(o.batch * o.seq);
  int64_t timed_steps = 0;
  auto validate = [&](int64_t step) {
    if (!valid) return;
    const Eval e = Validate(model, *valid, tokens);
    summary.valid_ce = e.ce;
    summary.valid_mtp_ce = e.mtp_ce;
    Json j{{"step", step}, {"valid_ce", e.ce}, {"valid_ppl", std::exp(e.ce)}};
    if (config.num_nextn_predict_layers > 0) j["valid_mtp_ce"] = e.mtp_ce;
    if (!e.moe_layers.empty()) {
      j["moe_layers"] = e.moe_layers;
      j["load_max_over_mean"] = e.load_max_over_mean;
    }
    log.Add(j);
    if (o.progress)
      std::fprintf(stderr, "step %lld: validation loss %.4f (perplexity %.2f)\n",
                   static_cast<long long>(step), e.ce, std::exp(e.ce));
  };

  const int64_t end = o.stop_after > 0 ? o.stop_after : o.steps;
  if (start > end) Fail("train: the state is at step {}, beyond --stop-after {}", start, end);
  for (int64_t step = start; step < end; ++step) {
    const Clock::time_point t0 = Clock::now();
    data.TrainBatch(o.seed, step, o.batch, tokens.data());
    const Losses loss = model.Forward(tokens.data());
    if (!std::isfinite(loss.total))
      Fail("train: the loss is {} at step {}; lower --lr or check the data", loss.total, step);
    const Clock::time_point t1 = Clock::now();
    params.ZeroGrads();
    model.Backward();
    const Clock::time_point t2 = Clock::now();
    const double lr = LearningRate(o, step);
    const double gnorm = opt.Step(params, lr);
    UpdateRoutingBiases(params, model.moe_stats(), static_cast<float>(o.bias_gamma));
    const Clock::time_point t3 = Clock::now();
    fwd_s += Seconds(t0, t1);
    bwd_s += Seconds(t1, t2);
    opt_s += Seconds(t2, t3);
    flops += step_flops;
    ++timed_steps;
    const double step_s = Seconds(t0, t3);
    const double tok_s = static_cast<double>(o.batch * o.seq) / step_s;
    summary.last = loss;
    log.Add(Json{{"step", step + 1},
                 {"epoch", data.Epoch(step + 1, o.batch)},
                 {"loss", loss.total},
                 {"ce", loss.ce},
                 {"mtp_ce", loss.mtp_ce},
                 {"balance", loss.balance},
                 {"lr", lr},
                 {"grad_norm", gnorm},
                 {"tokens_per_s", tok_s},
                 {"gflops", step_flops / step_s / 1e9}});
    if (o.progress && ((step + 1) % o.log_every == 0 || step + 1 == end)) {
      const double elapsed = Seconds(t_start, Clock::now());
      const double eta =
          elapsed / static_cast<double>(step + 1 - start) * static_cast<double>(end - step - 1);
      std::fprintf(stderr,
                   "step %lld/%lld | loss %.4f (ce %.4f, mtp %.4f, balance %.5f) | %.0f tok/s | "
                   "%.1f GFLOP/s | lr %.2e | ETA %s\n",
                   static_cast<long long>(step + 1), static_cast<long long>(o.steps), loss.total,
                   loss.ce, loss.mtp_ce, loss.balance, tok_s, step_flops / step_s / 1e9, lr,
                   Duration(eta).c_str());
    }
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < end) validate(step + 1);
    if (o.save_every > 0 && (step + 1) % o.save_every == 0 && step + 1 < end) save(step + 1);
  }
  validate(end);
  save(end);
  summary.steps = end;
  summary.seconds = fwd_s + bwd_s + opt_s;
  if (timed_steps > 0 && summary.seconds > 0) {
    summary.tokens_per_s = static_cast<double>(timed_steps * o.batch * o.seq) / summary.seconds;
    summary.gflops = flops / summary.seconds / 1e9;
  }
  if (o.progress && timed_steps > 0) {
    std::fprintf(stderr,
                 "train: %lld steps in %s: %.0f tok/s, %.1f GFLOP/s (forward %.0f%%, backward "
                 "%.0f%%, optimizer %.0f%%); wrote %s\n",
                 static_cast<long long>(timed_steps), Duration(summary.seconds).c_str(),
                 summary.tokens_per_s, summary.gflops, 100 * fwd_s / summary.seconds,
                 100 * bwd_s / summary.seconds, 100 * opt_s / summary.seconds, o.out_dir.c_str());
  }
  return summary;
}

BenchResult Benchmark(const Config& config, Precision precision, int64_t batch, int64_t seq,
                      int64_t steps, int64_t warmup, uint64_t seed) {
  if (batch < 1 || seq < 2 || steps < 1 || warmup < 0)
    Fail("train --bench: needs --batch >= 1, --seq >= 2, --steps >= 1");
  Params params(config);
  params.Init(config.raw.value("initializer_range", 0.02), seed);
  AdamW opt(params, AdamWOptions{});
  TrainModel model(params, batch, seq, Objective{}, precision);
  std::vector<int32_t> tokens(batch * (seq + 1));
  uint64_t state = seed + 1;
  BenchResult r;
  r.tokens_per_step = batch * seq;
  for (int64_t step = 0; step < warmup + steps; ++step) {
    for (int32_t& t : tokens) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      t = static_cast<int32_t>((state >> 33) % static_cast<uint64_t>(config.vocab_size));
    }
    const double q0 = model.quant_seconds();
    const Clock::time_point t0 = Clock::now();
    model.Forward(tokens.data());
    const Clock::time_point t1 = Clock::now();
    params.ZeroGrads();
    model.Backward();
    const Clock::time_point t2 = Clock::now();
    opt.Step(params, 1e-4);
    UpdateRoutingBiases(params, model.moe_stats(), 1e-3f);
    const Clock::time_point t3 = Clock::now();
    if (step < warmup) continue;
    ++r.steps;
    r.forward_s += Seconds(t0, t1);
    r.backward_s += Seconds(t1, t2);
    r.optimizer_s += Seconds(t2, t3);
    r.quant_s += model.quant_seconds() - q0;
    r.seconds += Seconds(t0, t3);
    r.flops_per_step = TrainFlopsPerToken(config, seq) * static_cast<double>(batch * seq);
  }
  return r;
}

}  // namespace dsv3::train
