#include "tools/ep.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "analysis/comm.h"
#include "core/error.h"
#include "core/json.h"
#include "runtime/sampler.h"
#include "tools/commands.h"

#ifdef DSV3_HAVE_MPI
#include "ep/mpi_group.h"
#endif

namespace dsv3::cli {
namespace {
EpSession* g_session = nullptr;

}  // namespace

EpSession* Ep() { return g_session; }
void SetEp(EpSession* session) { g_session = session; }

#ifdef DSV3_HAVE_MPI

struct EpSession::State {
  std::unique_ptr<ep::World> world;
  std::unique_ptr<ep::MpiGroup> group;
};

EpSession::EpSession(int* argc, char*** argv) {
  if (!ep::World::Launched()) return;
  state_ = new State();
  state_->world = std::make_unique<ep::World>(argc, argv);
  active_ = true;
  rank_ = state_->world->rank();
  size_ = state_->world->size();
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  local_size_ = local ? std::max(1, std::atoi(local)) : size_;
}

EpSession::~EpSession() {
  if (state_ == nullptr) return;
  state_->group.reset();
  state_->world.reset();
  delete state_;
}

void EpSession::Configure(const EpArgs& args) {
  if (!active_) return;
  ep::GroupOptions o;
  if (args.exchange == "fp8") {
    o.exchange = ep::Exchange::kFp8;
  } else if (args.exchange != "f32") {
    Fail("--ep-exchange {}: expected f32 or fp8", args.exchange);
  }
  if (args.ranks_per_node < 0) Fail("--ranks-per-node must be >= 1");
  o.ranks_per_node = args.ranks_per_node;
  state_->group = std::make_unique<ep::MpiGroup>(o);
}

ProcessGroup* EpSession::group() const { return state_ ? state_->group.get() : nullptr; }

void EpSession::AfterLoad(const Model& model) {
  if (!active_ || rank_ == 0) return;
  ep::Follow(model, *state_->group);
  throw FollowerDone{};
}

void EpSession::Finish() {
  if (active_ && rank_ == 0 && state_->group) state_->group->Stop();
}

void EpSession::Abort(const std::string& message) { state_->world->Abort(message); }

std::string EpSession::Holdings(const Model& model) const {
  if (!active_) return "[]";
  const std::vector<ep::RankFigures> f = state_->group->GatherFigures(model, false);
  const int64_t per_rank = model.config().n_routed_experts / size_;
  Json ranks = Json::array();
  for (int r = 0; r < size_; ++r) {
    ranks.push_back({{"rank", r},
                     {"routed_experts", {r * per_rank, (r + 1) * per_rank - 1}},
                     {"bytes_held", f[r].held_bytes},
                     {"bytes_elsewhere", f[r].elsewhere_bytes},
                     {"rss_bytes", f[r].rss_bytes}});
  }
  return ranks.dump();
}

void EpSession::PrintReport(const Model& model, const BenchOptions& o) const {
  if (!active_)
    Fail("--ep-report: run under mpirun (expert parallelism), e.g. mpirun -np 2 dsv3 bench ...");
  ep::MpiGroup& g = *state_->group;
  const Config& c = model.config();
  const int64_t P = std::max<int64_t>(1, o.prompt_tokens),
                n = std::max<int64_t>(1, o.decode_tokens);
  ContextOptions co;
  co.capacity = std::min<int64_t>(c.max_position_embeddings, P + n);
  co.kv_cache = o.kv_cache;
  co.matmul = o.matmul;
  Context ctx(model, co);
  std::vector<int32_t> prompt(static_cast<size_t>(std::min(P, co.capacity - n)));
  for (size_t i = 0; i < prompt.size(); ++i)
    prompt[i] = static_cast<int32_t>((i * 7919 + 13) % c.vocab_size);
  ctx.Forward(prompt);
  g.GatherFigures(model, /*reset=*/true);
  int32_t token = Argmax(ctx.last_logits(), c.vocab_size);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    ctx.Forward(std::span<const int32_t>(&token, 1));
    token = Argmax(ctx.last_logits(), c.vocab_size);
  }
  const double step_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / n;
  const std::vector<ep::RankFigures> f = g.GatherFigures(model, /*reset=*/true);
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.IsMoeLayer(l) ? 1 : 0;
  std::printf(
      "expert parallelism: %d ranks, %d node(s), exchange %s (token copy %lld B, partial "
      "sum %lld B), %lld MoE layers\n",
      size_, g.nodes(), ep::ExchangeName(g.options().exchange), (long long)g.record_bytes(),
      (long long)g.partial_bytes(), (long long)moe_layers);
  std::printf(
      "decode step %.3f ms (%lld steps after a %zu-token prompt; one sequence, on rank 0)\n",
      1e3 * step_s, (long long)n, prompt.size());
  const char* level_names[2] = {
      g.nodes() > 1 && f[0].stats.levels_used > 1 ? "between nodes" : "all ranks", "within nodes"};
  for (int r = 0; r < size_; ++r) {
    const ep::ExchangeStats& s = f[r].stats;
    std::printf("rank %d: exchange %.3f ms/step (in MPI, waiting included), experts %.3f ms/step",
                r, 1e3 * s.exchange_s / n, 1e3 * s.compute_s / n);
    if (r == 0) std::printf(", rest %.3f ms/step", 1e3 * (step_s - s.exchange_s / n));
    std::printf("; holds %s of weights, resident %s\n", Human(f[r].held_bytes).c_str(),
                Human(f[r].rss_bytes).c_str());
    for (int l = 0; l < s.levels_used; ++l) {
      const ep::LevelStats& v = s.levels[l];
      std::printf(
          "  %s: sent %.1f token copies/step (%s dispatch + %s combine per step, %s per "
          "token), kept %.1f, most destinations of one token %lld\n",
          level_names[l], double(v.records) / n, Human(double(v.dispatch_bytes) / n).c_str(),
          Human(double(v.combine_bytes) / n).c_str(),
          Human(double(v.dispatch_bytes + v.combine_bytes) / n).c_str(), double(v.self_records) / n,
          (long long)v.max_fanout);
    }
  }
  // dsv3 analyze tpot's model: every token to each of its experts (routed + shared), FP8 out and
  // BF16 back, per MoE layer.
  const double fan_out = static_cast<double>(c.num_experts_per_tok + c.n_shared_experts);
  const double modeled = moe_layers * fan_out * c.hidden_size * 3.0;
  std::printf(
      "analyzer model (dsv3 analyze tpot): %s per token sent (%lld MoE layers x %g "
      "experts x %lld values x (1 + 2) B)\n",
      Human(modeled).c_str(), (long long)moe_layers, fan_out, (long long)c.hidden_size);
  if (size_ < 2 || moe_layers == 0) return;
  // The link between ranks 0 and 1, and what the analyzer makes of the bytes measured above:
  // rank 0's dispatch and the combine it received, per MoE layer, over that bandwidth.
  const ep::MpiGroup::Link link = g.MeasureLink(8 << 20, 20);
  double out = 0, back = 0;
  for (int l = 0; l < f[0].stats.levels_used; ++l) out += f[0].stats.levels[l].dispatch_bytes;
  for (int r = 1; r < size_; ++r) {
    for (int l = 0; l < f[r].stats.levels_used; ++l) back += f[r].stats.levels[l].combine_bytes;
  }
  analysis::EpOptions eo;
  eo.hidden = static_cast<double>(c.hidden_size);
  eo.tokens_per_device = 1;
  eo.fan_out = 1;
  eo.micro_batches = 1;
  eo.layers = moe_layers;
  eo.dispatch_bytes = std::max(out / n / moe_layers, 1.0) / eo.hidden;
  eo.combine_bytes = std::max(back / n / moe_layers, 1.0) / eo.hidden;
  eo.bandwidth_gbs = link.gbs;
  const analysis::EpResult er = analysis::ExpertParallelDecode(eo);
  std::printf("link rank 0 <-> 1: %.2f GB/s one way (8 MiB ping-pong), latency %.1f us\n", link.gbs,
              link.latency_us);
  std::printf(
      "analyzer with the measured bytes and link: %.3f ms of exchange per step (+ %.3f ms "
      "latency: 3 collectives x %lld layers); measured on rank 0: %.3f ms in MPI\n",
      er.tpot_ms, 3 * moe_layers * link.latency_us / 1e3, (long long)moe_layers,
      1e3 * f[0].stats.exchange_s / n);
  std::printf(
      "  = dsv3 analyze tpot CONFIG --bandwidth-gbs %.2f --tokens-per-device 1 --fan-out 1 "
      "--micro-batches 1 --layers %lld --dispatch-bytes %.4f --combine-bytes %.4f\n",
      link.gbs, (long long)moe_layers, eo.dispatch_bytes, eo.combine_bytes);
}

#else  // built without MPI

struct EpSession::State {};
EpSession::EpSession(int*, char***) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr) {
    Fail(
        "this dsv3 was built without MPI (configure with Open MPI installed, -DDSV3_MPI=ON): it "
        "cannot run under mpirun");
  }
}
EpSession::~EpSession() = default;
void EpSession::Configure(const EpArgs&) {}
ProcessGroup* EpSession::group() const { return nullptr; }
void EpSession::AfterLoad(const Model&) {}
void EpSession::Finish() {}
void EpSession::Abort(const std::string& message) {
  std::fprintf(stderr, "dsv3: error: %s\n", message.c_str());
  std::exit(1);
}
std::string EpSession::Holdings(const Model&) const { return "[]"; }
void EpSession::PrintReport(const Model&, const BenchOptions&) const {
  Fail("--ep-report: this dsv3 was built without MPI (-DDSV3_MPI=ON with Open MPI installed)");
}

#endif

}  // namespace dsv3::cli
