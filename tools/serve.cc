// `dsv3 serve` and `dsv3 bench-serve`.
#include "tools/serve.h"

#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/json.h"
#include "runtime/scheduler.h"
#include "runtime/speculative.h"
#include "server/server.h"
#include "tools/cli_options.h"
#include "tools/commands.h"

namespace dsv3::cli {

struct ServeCommands::Args {
  std::string model_dir, tokenizer;
  server::ServerOptions server;
  int64_t draft = 1;    // MTP draft tokens per request and step
  bool no_mtp = false;  // decode without drafts even when the checkpoint has an MTP module
  LoadOptions load;
  // bench-serve
  std::string concurrency = "1,4";
  int64_t prompt_tokens = 32, new_tokens = 64;
  uint64_t seed = 0;
  bool json = false;
};

namespace {
// The MTP options of both commands, with generate's defaults.
void AddMtpOptions(CLI::App* cmd, int64_t* draft, bool* no_mtp, const char* no_mtp_help) {
  cmd->add_option("--draft", *draft,
                  fmt::format("MTP draft tokens per request and step, 1-{} (default 1)", kMaxDraft))
      ->check(CLI::Range(int64_t{1}, kMaxDraft));
  cmd->add_flag("--no-mtp", *no_mtp, no_mtp_help);
}
}  // namespace

ServeCommands::ServeCommands(CLI::App& app) : args_(std::make_unique<Args>()) {
  Args& a = *args_;
  a.server.scheduler.ctx_size = 0;
  serve_ = app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat and completions)");
  serve_->add_option("-m,--model", a.model_dir, "model folder")->required();
  serve_->add_option("--tokenizer", a.tokenizer,
                     "tokenizer.json or its folder (default: the model folder)");
  serve_->add_option("--host", a.server.host, "address to listen on (default 127.0.0.1)");
  serve_->add_option("--port", a.server.port, "port (default 8080; 0: any free port)")
      ->check(CLI::Range(0, 65535));
  serve_->add_option("--model-name", a.server.model_name,
                     "the model id clients send (default: the model folder's name)");
  serve_
      ->add_option("--parallel", a.server.scheduler.parallel,
                   "requests decoded together, each with its own KV cache slot (default 4)")
      ->check(CLI::Range(1, 256));
  serve_->add_option("-c,--ctx-size", a.server.scheduler.ctx_size,
                     "KV cache positions per slot (default: max_position_embeddings, at most "
                     "4096)");
  AddKvCacheOption(serve_, &a.server.scheduler.kv_cache);
  AddMatMulOption(serve_, &a.server.scheduler.matmul);
  AddLmHeadOption(serve_, &a.load);
  serve_
      ->add_option("--queue", a.server.scheduler.queue,
                   "requests that may wait for a slot; more get HTTP 503 (default 64)")
      ->check(CLI::Range(0, 100000));
  serve_
      ->add_option("--max-body", a.server.max_body,
                   "largest request body in bytes; larger get HTTP 413 (default 8 MiB)")
      ->check(CLI::Range(1, 1 << 30));
  AddMtpOptions(serve_, &a.draft, &a.no_mtp,
                "decode without drafts even when the checkpoint has MTP layers");

  bench_ = app.add_subcommand(
      "bench-serve",
      "aggregate decode tokens/s of the batching scheduler with 1, 4, ... concurrent requests, "
      "without and with MTP drafts");
  bench_->add_option("-m,--model", a.model_dir, "model folder")->required();
  bench_->add_option("--tokenizer", a.tokenizer,
                     "tokenizer.json or its folder (default: the model folder)");
  bench_->add_option("--concurrency", a.concurrency,
                     "concurrent requests per run, comma-separated (default 1,4)");
  bench_->add_option("-p,--prompt", a.prompt_tokens, "random prompt tokens per request (32)")
      ->check(CLI::Range(1, 1 << 20));
  bench_->add_option("-n,--n-predict", a.new_tokens, "tokens generated per request (64)")
      ->check(CLI::Range(2, 1 << 20));
  bench_->add_option("--seed", a.seed, "seed of the random prompts");
  AddKvCacheOption(bench_, &a.server.scheduler.kv_cache);
  AddMatMulOption(bench_, &a.server.scheduler.matmul);
  AddLmHeadOption(bench_, &a.load);
  AddMtpOptions(bench_, &a.draft, &a.no_mtp, "skip the runs with MTP drafts");
  bench_->add_flag("--json", a.json, "print JSON");
}

ServeCommands::~ServeCommands() = default;

int ServeCommands::Run() const { return *serve_ ? RunServe() : RunBench(); }

namespace {

struct Loaded {
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Model> model;
};

Loaded Load(const std::string& model_dir, const std::string& tokenizer, int64_t* ctx_size,
            kernels::MatMulPrecision matmul, const LoadOptions& load) {
  Loaded l;
  l.tokenizer = LoadTokenizer(tokenizer, model_dir);
  l.model = LoadModel(model_dir, /*quiet=*/false, matmul, load);
  const Config& c = l.model->config();
  CheckVocab(*l.tokenizer, c);
  if (*ctx_size <= 0) *ctx_size = std::min<int64_t>(c.max_position_embeddings, 4096);
  if (*ctx_size > c.max_position_embeddings) {
    Fail("--ctx-size {} exceeds max_position_embeddings ({})", *ctx_size,
         c.max_position_embeddings);
  }
  return l;
}

// Drafts per step as generate decides them: MTP when the checkpoint has a module and --no-mtp is
// not given; never with expert parallelism (the scheduler's slots live on several ranks).
int64_t Drafts(const Model& m, bool no_mtp, int64_t draft) {
  if (!UseMtp(m, no_mtp)) return 0;
  if (m.group() != nullptr) {
    std::fprintf(stderr,
                 "dsv3: note: MTP drafts are not available with expert parallelism; "
                 "decoding without drafts\n");
    return 0;
  }
  return draft;
}

}  // namespace

int ServeCommands::RunServe() const {
  server::ServerOptions o = args_->server;
  Loaded l = Load(args_->model_dir, args_->tokenizer, &o.scheduler.ctx_size, o.scheduler.matmul,
                  args_->load);
  o.scheduler.draft = Drafts(*l.model, args_->no_mtp, args_->draft);
  if (o.model_name.empty()) {
    o.model_name = std::filesystem::path(args_->model_dir).lexically_normal().filename().string();
    if (o.model_name.empty()) {
      o.model_name =
          std::filesystem::path(args_->model_dir).lexically_normal().parent_path().filename();
    }
  }
  // SIGINT and SIGTERM go to one thread that stops the server; every other thread (created
  // after this) has them blocked. A peer closing its socket must not kill the process.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  server::Server srv(*l.model, *l.tokenizer, o);
  const int port = srv.Bind();
  std::atomic<bool> done{false};
  std::thread signals([&] {
    int sig = 0;
    sigwait(&set, &sig);
    if (done) return;
    std::fprintf(stderr, "dsv3: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    srv.Stop();
  });
  const std::string drafts =
      o.scheduler.draft > 0 ? fmt::format(", MTP draft {}", o.scheduler.draft) : "";
  std::fprintf(stderr,
               "dsv3: serving %s on http://%s:%d (%lld slots x %lld tokens, queue %lld%s)\n",
               o.model_name.c_str(), o.host.c_str(), port, (long long)o.scheduler.parallel,
               (long long)o.scheduler.ctx_size, (long long)o.scheduler.queue, drafts.c_str());
  std::fflush(stderr);
  srv.Run();
  srv.Stop();
  done = true;
  kill(getpid(), SIGTERM);  // wakes the signal thread when no signal came (blocked: no effect)
  signals.join();
  std::fprintf(stderr, "dsv3: server stopped\n");
  return 0;
}

int ServeCommands::RunBench() const {
  int64_t ctx_size = args_->prompt_tokens + args_->new_tokens;
  Loaded l = Load(args_->model_dir, args_->tokenizer, &ctx_size, args_->server.scheduler.matmul,
                  args_->load);
  const Config& c = l.model->config();
  std::vector<int64_t> counts;
  for (int32_t n : ParseIds(args_->concurrency)) {
    if (n < 1 || n > 256) Fail("--concurrency: {} is not in 1..256", n);
    counts.push_back(n);
  }
  // Each concurrency without drafts, then (when the checkpoint has MTP) with them.
  const int64_t draft = Drafts(*l.model, args_->no_mtp, args_->draft);
  std::vector<int64_t> drafts = {0};
  if (draft > 0) drafts.push_back(draft);
  OrderedJson runs = OrderedJson::array();
  double base = 0;
  for (const int64_t n : counts) {
    double plain = 0;  // this concurrency's tokens/s without drafts
    for (const int64_t k : drafts) {
      SchedulerOptions so;
      so.parallel = n;
      so.ctx_size = ctx_size;
      so.queue = n;
      so.kv_cache = args_->server.scheduler.kv_cache;
      so.matmul = args_->server.scheduler.matmul;
      so.draft = k;
      Scheduler sched(*l.model, *l.tokenizer, so);
      std::mt19937_64 rng(args_->seed);  // the same prompts for every run
      std::vector<std::shared_ptr<Job>> jobs;
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < n; ++i) {
        ServeRequest r;
        for (int64_t t = 0; t < args_->prompt_tokens; ++t) {
          r.prompt.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(c.vocab_size)));
        }
        r.options.generate.max_new_tokens = args_->new_tokens;
        r.options.generate.stop_at_eos = false;
        jobs.push_back(sched.Submit(std::move(r)));
        if (!jobs.back()) Fail("the scheduler refused request {}", i);
      }
      for (const auto& job : jobs) {
        std::string text;
        while (!job->Wait(&text, std::chrono::milliseconds(100))) text.clear();
      }
      const double wall = Seconds(t0);
      const SchedulerStats s = sched.Stats();
      const double tps = s.decode_tokens_per_second();
      if (base == 0) base = tps;
      if (k == 0) plain = tps;
      runs.push_back({{"concurrency", n},
                      {"draft", k},
                      {"decode_steps", s.decode_steps},
                      {"decode_tokens", s.decode_tokens},
                      {"decode_seconds", s.decode_seconds},
                      {"decode_tokens_per_second", tps},
                      {"speedup_vs_first", base > 0 ? tps / base : 0},
                      {"speedup_vs_no_drafts", plain > 0 ? tps / plain : 0},
                      {"drafts_proposed", s.drafts_proposed},
                      {"drafts_accepted", s.drafts_accepted},
                      {"draft_acceptance", s.draft_acceptance()},
                      {"prefill_seconds", s.prefill_seconds},
                      {"wall_seconds", wall}});
      if (args_->json) continue;
      if (k == 0) {
        std::printf(
            "concurrency %3lld: %lld decode steps, %lld tokens in %.3f s -> %.2f tokens/s "
            "(x%.2f vs %lld); prefill %.3f s; wall %.3f s\n",
            (long long)n, (long long)s.decode_steps, (long long)s.decode_tokens, s.decode_seconds,
            tps, base > 0 ? tps / base : 0, (long long)counts[0], s.prefill_seconds, wall);
      } else {
        std::printf(
            "  MTP draft %lld:  %lld decode steps, %lld tokens in %.3f s -> %.2f tokens/s "
            "(x%.2f vs no drafts); %.2f tokens per step and request, acceptance %.1f%% "
            "(%lld of %lld); wall %.3f s\n",
            (long long)k, (long long)s.decode_steps, (long long)s.decode_tokens, s.decode_seconds,
            tps, plain > 0 ? tps / plain : 0,
            s.decode_tokens /
                static_cast<double>(std::max<int64_t>(1, s.decode_tokens - s.drafts_accepted)),
            100 * s.draft_acceptance(), (long long)s.drafts_accepted, (long long)s.drafts_proposed,
            wall);
      }
      std::fflush(stdout);
    }
  }
  if (args_->json) {
    std::printf("%s\n", OrderedJson({{"model", args_->model_dir},
                                     {"prompt_tokens", args_->prompt_tokens},
                                     {"new_tokens", args_->new_tokens},
                                     {"draft", draft},
                                     {"runs", runs}})
                            .dump()
                            .c_str());
  }
  return 0;
}

}  // namespace dsv3::cli
