// Expert parallelism (src/ep) under mpirun: ctest runs this binary on 1, 2 and 4 ranks. In each
// test every rank loads the model in one process group; rank 0 drives (and checks), the others
// follow it. The single-process figures come from a second, ungrouped copy of the model on rank 0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "ep/mpi_group.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/synth.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"
#include "tests/kernels_reference.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

namespace ref = kernels::reference;
using ep::MpiGroup;

int WorldSize() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Loads `dir` into a group with `options` on every rank; rank 0 runs drive(model, group), the
// others follow until it returns (or fails).
template <typename F>
void InGroup(const std::string& dir, const ep::GroupOptions& options, F&& drive) {
  MpiGroup group(options);
  std::unique_ptr<Model> model = Model::Load(dir, &group);
  if (group.rank() != 0) return ep::Follow(*model, group);
  struct Stop {
    MpiGroup& g;
    ~Stop() { g.Stop(); }
  } stop{group};
  drive(*model, group);
}

// A synthetic MoE model (the same bytes on every rank: each writes its own copy).
class SynthModel {
 public:
  SynthModel(std::vector<std::string> set, const std::string& dtype = "bf16") {
    SynthOptions o;
    o.preset = "tiny";
    o.dtype = dtype;
    o.set = std::move(set);
    o.seed = 7;
    o.progress = false;
    o.out_dir = dir_.path();
    Synthesize(o);
  }
  const std::string& path() const { return dir_.path(); }

 private:
  test::TempDir dir_;
};

std::vector<std::string> SynthGrouped() {  // 32 experts in 8 groups, top 6 from 2 groups
  return {"n_routed_experts=32", "n_group=8", "topk_group=2", "num_experts_per_tok=6",
          "num_hidden_layers=4"};
}

// A prompt and greedy decoding, recording every logit row and every routing decision.
struct Decoded {
  std::vector<float> logits;    // [prompt + steps, V]
  std::vector<int32_t> tokens;  // the greedy tokens
  ForwardTrace trace;
};

Decoded Decode(const Model& m, const std::vector<int32_t>& prompt, int steps) {
  const int64_t V = m.config().vocab_size, T = static_cast<int64_t>(prompt.size());
  Decoded d;
  ContextOptions o;
  o.capacity = 64;
  Context ctx(m, o);
  d.logits.resize(static_cast<size_t>((T + steps) * V));
  ctx.Forward(prompt, {.logits = std::span<float>(d.logits.data(), T * V)}, &d.trace);
  for (int i = 0; i < steps; ++i) {
    const int32_t next = Argmax(ctx.last_logits(), V);
    d.tokens.push_back(next);
    ctx.Forward(std::span<const int32_t>(&next, 1), {}, &d.trace);
    std::copy_n(ctx.last_logits(), V, d.logits.begin() + (T + i) * V);
  }
  return d;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

void ExpectSameRouting(const ForwardTrace& a, const ForwardTrace& b) {
  ASSERT_EQ(a.routing.size(), b.routing.size());
  for (size_t l = 0; l < a.routing.size(); ++l) {
    EXPECT_EQ(a.routing[l].indices, b.routing[l].indices) << "layer " << a.routing[l].layer;
  }
}

std::vector<std::string> Models() {
  return {test::TestData("models/v3-tiny"), test::TestData("models/v2lite-tiny")};
}

const std::vector<int32_t> kPrompt = {1, 17, 230, 5, 998, 64, 3};

TEST(ExpertParallel, Float32ExchangeMatchesOneProcess) {
  SynthModel synth(SynthGrouped()), synth_fp8(SynthGrouped(), "fp8");
  std::vector<std::string> dirs = Models();
  dirs.push_back(synth.path());
  dirs.push_back(synth_fp8.path());
  for (const std::string& dir : dirs) {
    DSV3_REQUIRE_DATA(dir + "/config.json");
    InGroup(dir, {}, [&](const Model& m, MpiGroup& g) {
      SCOPED_TRACE(dir + " on " + std::to_string(g.size()) + " ranks");
      const std::unique_ptr<Model> alone = Model::Load(dir);
      const Decoded want = Decode(*alone, kPrompt, 8);
      const Decoded got = Decode(m, kPrompt, 8);
      EXPECT_LE(MaxAbsDiff(got.logits, want.logits), 1e-5f);
      EXPECT_EQ(got.tokens, want.tokens);
      ExpectSameRouting(got.trace, want.trace);
      if (g.size() == 1) {  // one rank: the same sums
        EXPECT_EQ(got.logits, want.logits);
      }
      // Rank 0 holds only its share of the routed experts.
      EXPECT_EQ(m.report().elsewhere_bytes == 0, g.size() == 1);
      EXPECT_EQ(m.report().main_bytes + m.report().mtp_bytes + m.report().elsewhere_bytes,
                alone->report().main_bytes + alone->report().mtp_bytes);
    });
  }
}

TEST(ExpertParallel, SpeculativeDecodingMatchesOneProcess) {
  const std::string dir = test::TestData("models/v3-tiny");  // has an MTP module (a MoE layer)
  DSV3_REQUIRE_DATA(dir + "/config.json");
  InGroup(dir, {}, [&](const Model& m, MpiGroup&) {
    const std::unique_ptr<Model> alone = Model::Load(dir);
    auto run = [&](const Model& model) {
      ContextOptions o;
      o.capacity = 64;
      Context ctx(model, o);
      SpeculativeDecoder spec(model, o, 2);
      GenerateOptions g;
      g.max_new_tokens = 12;
      g.stop_at_eos = false;
      GenerateStats stats;
      const std::vector<int32_t> out = spec.Generate(ctx, kPrompt, g, &stats, nullptr);
      EXPECT_GT(stats.decode_steps, 0);
      return out;
    };
    EXPECT_EQ(run(m), run(*alone));
  });
}

// Sequences in slots spread over the ranks (slot s on rank s % size), prefilled one by one and
// decoded in batches, with a prefix copied between slots of different ranks.
TEST(ExpertParallel, ConcurrentSequencesEqualEachDecodedAlone) {
  SynthModel synth(SynthGrouped());
  for (const std::string& dir : {test::TestData("models/v3-tiny"), synth.path()}) {
    DSV3_REQUIRE_DATA(dir + "/config.json");
    InGroup(dir, {}, [&](const Model& m, MpiGroup& g) {
      SCOPED_TRACE(dir + " on " + std::to_string(g.size()) + " ranks");
      const int64_t V = m.config().vocab_size;
      const int S = 5, steps = 6;
      std::vector<std::vector<int32_t>> prompts;
      for (int s = 0; s < S; ++s) {
        std::vector<int32_t> p;
        for (int i = 0; i < 3 + s; ++i) p.push_back((s * 131 + i * 17 + 1) % 1000);
        prompts.push_back(p);
      }
      // Batched under expert parallelism; slot 4 starts from slot 1's prompt (CopyPrefix).
      auto batched = [&](const Model& model) {
        ContextOptions o;
        o.capacity = 64;
        o.slots = S;
        Context ctx(model, o);
        std::vector<float> logits(S * V);
        std::vector<std::vector<int32_t>> out(S);
        for (int s = 0; s < S; ++s) {
          if (s == 4) {
            ctx.CopyPrefix(1, 4, static_cast<int64_t>(prompts[1].size()));
            const Context::Step step{
                4, std::span<const int32_t>(prompts[4]).subspan(prompts[1].size())};
            ctx.ForwardBatch(std::span<const Context::Step>(&step, 1), logits.data(), false);
          } else {
            const Context::Step step{s, prompts[s]};
            ctx.ForwardBatch(std::span<const Context::Step>(&step, 1), logits.data(), false);
          }
          out[s].push_back(Argmax(logits.data(), V));
        }
        for (int i = 1; i < steps; ++i) {
          std::vector<Context::Step> batch;
          for (int s = 0; s < S; ++s)
            batch.push_back({s, std::span<const int32_t>(&out[s].back(), 1)});
          ctx.ForwardBatch(batch, logits.data(), true);
          for (int s = 0; s < S; ++s) out[s].push_back(Argmax(logits.data() + s * V, V));
        }
        return out;
      };
      // Each sequence alone, decoded one token at a time (exact path, like the batch).
      auto alone = [&](const Model& model, int s) {
        std::vector<int32_t> p = prompts[s];
        ContextOptions o;
        o.capacity = 64;
        Context ctx(model, o);
        std::vector<float> logits(V);
        const Context::Step step{0, p};
        ctx.ForwardBatch(std::span<const Context::Step>(&step, 1), logits.data(), false);
        std::vector<int32_t> out = {Argmax(logits.data(), V)};
        for (int i = 1; i < steps; ++i) {
          const Context::Step one{0, std::span<const int32_t>(&out.back(), 1)};
          ctx.ForwardBatch(std::span<const Context::Step>(&one, 1), logits.data(), true);
          out.push_back(Argmax(logits.data(), V));
        }
        return out;
      };
      // Slot 4's prompt is slot 1's followed by its own tokens.
      prompts[4].insert(prompts[4].begin(), prompts[1].begin(), prompts[1].end());
      const std::unique_ptr<Model> single = Model::Load(dir);
      const std::vector<std::vector<int32_t>> got = batched(m);
      EXPECT_EQ(got, batched(*single));
      for (int s = 0; s < S; ++s) {
        EXPECT_EQ(got[s], alone(*single, s)) << "slot " << s;
        EXPECT_EQ(got[s], alone(m, s)) << "slot " << s;
      }
    });
  }
}

// ---- FP8 dispatch / BF16 combine against an emulation of the same quantization -----------------

float QuantDequant(const float* x, int64_t D, int64_t c) {  // x's E4M3 value at c, 1x128 scales
  const int64_t b0 = c / 128 * 128, b1 = std::min(D, b0 + 128);
  float amax = 0;
  for (int64_t i = b0; i < b1; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = amax > 0 ? amax / 448.0f : 1.0f;
  return E4M3ToF32(F32ToE4M3(x[c] / s)) * s;
}

std::vector<float> ReferenceMlp(const MlpWeights& w, const std::vector<float>& x) {
  const int64_t I = w.gate.rows, D = w.down.rows;
  std::vector<float> g(I), u(I), h(I), y(D);
  ref::MatMul(w.gate, x.data(), 0, 1, g.data(), 0);
  ref::MatMul(w.up, x.data(), 0, 1, u.data(), 0);
  ref::SiluMul(g.data(), u.data(), h.data(), I);
  ref::MatMul(w.down, h.data(), 0, 1, y.data(), 0);
  return y;
}

TEST(ExpertParallel, Fp8DispatchMatchesAnEmulationOfItsQuantization) {
  SynthModel synth(SynthGrouped());
  for (const std::string& dir : {test::TestData("models/v3-tiny"), synth.path()}) {
    DSV3_REQUIRE_DATA(dir + "/config.json");
    InGroup(dir, {.exchange = ep::Exchange::kFp8}, [&](const Model& m, MpiGroup& g) {
      SCOPED_TRACE(dir + " on " + std::to_string(g.size()) + " ranks");
      const Config& c = m.config();
      const int64_t D = c.hidden_size, K = c.num_experts_per_tok, T = kPrompt.size();
      const std::unique_ptr<Model> full = Model::Load(dir);  // every expert's weights
      std::map<std::string, std::vector<float>> seen;
      ForwardTrace trace;
      trace.tensor = [&](const std::string& name, const float* data, int64_t rows, int64_t cols,
                         int64_t stride) {
        std::vector<float>& v = seen[name];
        for (int64_t r = 0; r < rows; ++r)
          v.insert(v.end(), data + r * stride, data + r * stride + cols);
      };
      ContextOptions o;
      o.capacity = 64;
      Context ctx(m, o);
      ctx.Forward(kPrompt, {}, &trace);
      int64_t checked = 0, loose = 0;
      float worst_exact = 0;  // how far the unquantized routed sum is: the test can fail
      for (const ForwardTrace::Routing& r : trace.routing) {
        const MoeWeights& w = full->weights().layers[r.layer].moe;
        const std::vector<float>& xn = seen.at("layer" + std::to_string(r.layer) + ".ffn_in");
        const std::vector<float>& got = seen.at("layer" + std::to_string(r.layer) + ".ffn_out");
        for (int64_t t = 0; t < T; ++t) {
          std::vector<float> x(xn.begin() + t * D, xn.begin() + (t + 1) * D), q(D);
          for (int64_t i = 0; i < D; ++i) q[i] = QuantDequant(x.data(), D, i);
          std::vector<float> want(D, 0.0f), exact(D, 0.0f), ulps(D, 0.0f);
          for (int rank = 0; rank < g.size(); ++rank) {
            std::vector<std::pair<int32_t, float>> mine;  // this rank's experts, ascending
            for (int64_t k = 0; k < K; ++k) {
              const int32_t e = r.indices[t * K + k];
              if (g.ExpertOwner(e) == rank) mine.push_back({e, r.weights[t * K + k]});
            }
            std::sort(mine.begin(), mine.end());
            std::vector<float> partial(D, 0.0f);
            for (const auto& [e, wt] : mine) {
              const std::vector<float> y = ReferenceMlp(w.experts[e], q),
                                       ye = ReferenceMlp(w.experts[e], x);
              for (int64_t i = 0; i < D; ++i) partial[i] += wt * y[i], exact[i] += wt * ye[i];
            }
            for (int64_t i = 0; i < D; ++i) {
              want[i] += BF16ToF32(F32ToBF16(partial[i]));
              ulps[i] += std::fabs(partial[i]) * 0x1p-8f;  // one BF16 rounding step
            }
          }
          const std::vector<float> shared =
              c.n_shared_experts > 0 ? ReferenceMlp(w.shared, x) : std::vector<float>(D, 0.0f);
          for (int64_t i = 0; i < D; ++i) {
            const float out = got[t * D + i], diff = std::fabs(out - (want[i] + shared[i]));
            EXPECT_LE(diff, ulps[i] + 1e-4f)
                << "layer " << r.layer << " token " << t << " [" << i << "]";
            loose += diff > 1e-5f;
            ++checked;
            worst_exact =
                std::max(worst_exact, std::fabs(out - (exact[i] + shared[i])) - ulps[i] - 1e-4f);
          }
        }
      }
      EXPECT_GT(checked, 0);
      EXPECT_LT(loose, checked / 50) << "more than 2% of values off by more than 1e-5";
      EXPECT_GT(worst_exact, 0.0f) << "FP8 dispatch indistinguishable from float32";
    });
  }
}

// ---- node-limited routing and the bytes exchanged ----------------------------------------------

TEST(ExpertParallel, NodeLimitedRoutingAndBytesFollowTheRouting) {
  SynthModel synth(SynthGrouped());
  const int P = WorldSize();
  std::vector<int> layouts = {0, 1};              // one node; every rank its own node
  if (P % 2 == 0 && P > 2) layouts.push_back(2);  // two levels: between and within nodes
  for (int rpn : layouts) {
    InGroup(synth.path(), {.ranks_per_node = rpn}, [&](const Model& m, MpiGroup& g) {
      SCOPED_TRACE("ranks per node " + std::to_string(rpn) + " of " + std::to_string(P));
      const Config& c = m.config();
      const int64_t K = c.num_experts_per_tok;
      const std::unique_ptr<Model> alone = Model::Load(synth.path());
      g.GatherFigures(m, /*reset=*/true);
      const Decoded got = Decode(m, kPrompt, 6);
      const std::vector<ep::RankFigures> f = g.GatherFigures(m, /*reset=*/true);
      const Decoded want = Decode(*alone, kPrompt, 6);
      EXPECT_LE(MaxAbsDiff(got.logits, want.logits), 1e-5f);
      EXPECT_EQ(got.tokens, want.tokens);
      // From the routing: per token and MoE layer, the nodes (level 0) and ranks it reaches.
      const int R = rpn > 0 ? rpn : P, nodes = P / R;
      int64_t to_nodes = 0, to_ranks_elsewhere = 0, most_nodes = 0, most_ranks = 0;
      std::vector<int64_t> received(P, 0);  // token copies each rank's experts answer
      for (const ForwardTrace::Routing& r : got.trace.routing) {
        const int64_t T = static_cast<int64_t>(r.indices.size()) / K;
        for (int64_t t = 0; t < T; ++t) {
          std::set<int> node_set, rank_set;
          for (int64_t k = 0; k < K; ++k) {
            const int owner = g.ExpertOwner(r.indices[t * K + k]);
            rank_set.insert(owner);
            node_set.insert(owner / R);
          }
          most_nodes = std::max<int64_t>(most_nodes, node_set.size());
          most_ranks = std::max<int64_t>(most_ranks, rank_set.size());
          to_nodes += static_cast<int64_t>(node_set.size()) - (node_set.count(0) ? 1 : 0);
          to_ranks_elsewhere += static_cast<int64_t>(rank_set.size()) - (rank_set.count(0) ? 1 : 0);
          for (int owner : rank_set) ++received[owner];
        }
      }
      EXPECT_EQ(g.nodes(), nodes);
      if (nodes > 1) {
        EXPECT_LE(most_nodes, c.topk_group) << "a token reached more nodes than topk_group";
      }
      const ep::LevelStats& top = f[0].stats.levels[0];
      EXPECT_EQ(top.max_fanout, f[0].stats.levels_used == 2 ? most_nodes : most_ranks);
      if (f[0].stats.levels_used == 1) {
        // Rank 0 sent one copy per (token, other rank), and got one partial back from each; the
        // other ranks sent no tokens and answered the copies they got.
        EXPECT_EQ(top.records, to_ranks_elsewhere);
        EXPECT_EQ(top.dispatch_bytes, to_ranks_elsewhere * g.record_bytes());
        EXPECT_EQ(top.combine_bytes, 0);
        for (int r = 1; r < P; ++r) {
          EXPECT_EQ(f[r].stats.levels[0].records, 0) << "rank " << r;
          EXPECT_EQ(f[r].stats.levels[0].combine_bytes, received[r] * g.partial_bytes())
              << "rank " << r;
        }
      } else {
        // Between nodes, one copy per (token, other node); rank 0's node forwards inside.
        EXPECT_EQ(top.records, to_nodes);
        EXPECT_EQ(top.dispatch_bytes, to_nodes * g.record_bytes());
        EXPECT_LE(top.max_fanout, c.topk_group);
      }
    });
  }
}

TEST(ExpertParallel, WorldsThatCannotSplitTheExpertsAreClearErrors) {
  const int P = WorldSize();
  if (P == 1) GTEST_SKIP() << "one rank splits anything";
  SynthModel odd({"n_routed_experts=6", "n_group=1", "topk_group=1", "topk_method=greedy",
                  "num_experts_per_tok=2"});
  if (6 % P != 0) {
    MpiGroup g({});
    const std::string msg = test::ErrorMessage([&] { Model::Load(odd.path(), &g); });
    EXPECT_NE(msg.find("6 routed experts cannot be split evenly over " + std::to_string(P)),
              std::string::npos)
        << msg;
  }
  MpiGroup g({.ranks_per_node = 3});
  SynthModel synth(SynthGrouped());
  const std::string msg = test::ErrorMessage([&] { Model::Load(synth.path(), &g); });
  if (P % 3 != 0) {
    EXPECT_NE(msg.find("--ranks-per-node 3 does not divide"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace dsv3

int main(int argc, char** argv) {
  dsv3::ep::World world(&argc, &argv);
  dsv3::SetNumThreads(1);  // the ranks share this machine's cores
  testing::InitGoogleTest(&argc, argv);
  if (world.rank() != 0) {  // one report, from rank 0
    testing::TestEventListeners& l = testing::UnitTest::GetInstance()->listeners();
    delete l.Release(l.default_result_printer());
  }
  return RUN_ALL_TESTS();
}
