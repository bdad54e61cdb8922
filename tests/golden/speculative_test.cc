// Speculative decoding with the MTP module: greedy output identical to plain decoding on every
// reference sequence for 1, 2 and 3 drafts; the MTP cache consistent with the accepted tokens;
// sampled output with the plain sampler's distribution (a fixed-seed chi-square test); the
// module batched over several sequences (the serving scheduler's drafts) exact.
#include "runtime/speculative.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/synth.h"
#include "runtime/generate.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

class SpeculativeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::TestData("models/v3-tiny");
    DSV3_REQUIRE_DATA(dir_ + "/reference.json");
    model_ = Model::Load(dir_);
    ref_ = std::make_unique<test::Reference>(dir_);
  }
  std::string dir_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<test::Reference> ref_;
};

TEST_F(SpeculativeTest, GreedyIsIdenticalToPlainDecoding) {
  for (const Json& seq : ref_->json()["sequences"]) {
    const std::vector<int32_t> prompt = seq["tokens"].get<std::vector<int32_t>>();
    const std::vector<int32_t> want = seq["greedy"]["new_tokens"].get<std::vector<int32_t>>();
    const int64_t n = static_cast<int64_t>(want.size());
    GenerateOptions g;
    g.max_new_tokens = n;
    g.stop_at_eos = false;
    for (int64_t draft : {1, 2, 3}) {
      const ContextOptions o{static_cast<int64_t>(prompt.size()) + n + draft, 64,
                             AttentionImpl::kAuto};
      Context ctx(*model_, o);
      SpeculativeDecoder spec(*model_, o, draft);
      GenerateStats stats;
      EXPECT_EQ(Generate(ctx, prompt, g, &stats, {}, &spec), want)
          << seq["name"] << " draft " << draft;
      EXPECT_EQ(stats.new_tokens, n);
      EXPECT_EQ(stats.decode_tokens, n - 1);
      EXPECT_LE(stats.decode_steps, n - 1);
      ASSERT_EQ(stats.drafts_checked.size(), static_cast<size_t>(draft));
      EXPECT_GT(stats.drafts_checked[0], 0);
      // Each verified step produces its accepted drafts plus one token.
      int64_t accepted = 0;
      for (int64_t a : stats.drafts_accepted) accepted += a;
      EXPECT_EQ(stats.decode_tokens, stats.decode_steps + accepted);
      EXPECT_TRUE(spec.InSync(ctx));
      EXPECT_EQ(ctx.n_past(), static_cast<int64_t>(prompt.size()) + n - 1);
    }
  }
}

// With a BF16 cache too: speculative greedy decoding gives exactly the tokens plain greedy
// decoding with the same cache gives (the reference's greedy tokens need not hold: the cache
// rounds).
TEST_F(SpeculativeTest, GreedyIsIdenticalToPlainDecodingWithBf16Cache) {
  const Json& seq = ref_->json()["sequences"][2];
  const std::vector<int32_t> prompt = seq["tokens"].get<std::vector<int32_t>>();
  const int64_t n = 24;
  GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_at_eos = false;
  const ContextOptions plain{static_cast<int64_t>(prompt.size()) + n, 64, AttentionImpl::kAuto, 1,
                             KvCacheType::kBF16};
  Context alone(*model_, plain);
  const std::vector<int32_t> want = Generate(alone, prompt, g, nullptr, {}, nullptr);
  for (int64_t draft : {1, 3}) {
    const ContextOptions o{static_cast<int64_t>(prompt.size()) + n + draft, 64,
                           AttentionImpl::kAuto, 1, KvCacheType::kBF16};
    Context ctx(*model_, o);
    SpeculativeDecoder spec(*model_, o, draft);
    EXPECT_EQ(Generate(ctx, prompt, g, nullptr, {}, &spec), want) << "draft " << draft;
    EXPECT_TRUE(spec.InSync(ctx));
  }
}

// After speculative decoding, the MTP cache holds what a fresh MTP pass over the final sequence
// computes: nothing of the rejected or chained drafts survives.
TEST_F(SpeculativeTest, MtpCacheMatchesAFreshPass) {
  const Json& seq = ref_->json()["sequences"][2];
  const std::vector<int32_t> prompt = seq["tokens"].get<std::vector<int32_t>>();
  const int64_t n = 20, D = model_->config().hidden_size;
  const ContextOptions o{static_cast<int64_t>(prompt.size()) + n + 3, 64, AttentionImpl::kAuto};
  Context ctx(*model_, o);
  SpeculativeDecoder spec(*model_, o, 3);
  GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_at_eos = false;
  g.sampling = {0.9f, 1.0f, 0, 5};  // sampled, so that drafts get rejected too
  const std::vector<int32_t> out = Generate(ctx, prompt, g, nullptr, {}, &spec);
  // Fresh: the main model over prompt + out (but the last token), then the MTP slots.
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), out.begin(), out.end());
  const int64_t L = static_cast<int64_t>(all.size()) - 1;
  Context fresh(*model_, {L + 1, 64, AttentionImpl::kAuto});
  std::vector<float> hidden(L * D);
  fresh.Forward(std::span<const int32_t>(all.data(), L), {.hidden = hidden});
  MtpContext mtp(*model_, 0, {L + 1, 64, AttentionImpl::kAuto});
  for (int64_t i = 0; i + 1 < L; i += 64) {
    const int64_t nb = std::min<int64_t>(64, L - 1 - i);
    mtp.Forward(hidden.data() + i * D, D, std::span<const int32_t>(all.data() + i + 1, nb));
  }
  // The decoder keeps the last slot pending (its hidden is known, the slot runs with the next
  // step), so it has run L - 1 slots like the fresh pass.
  ASSERT_TRUE(spec.InSync(ctx));
  const KvCache& want = mtp.cache();
  float worst = 0;
  Context again(*model_, o);  // a second decoder run reproduces the first exactly
  SpeculativeDecoder spec2(*model_, o, 3);
  EXPECT_EQ(Generate(again, prompt, g, nullptr, {}, &spec2), out);
  std::vector<float> a(static_cast<size_t>(want.width())), b(a.size());
  for (int64_t s = 0; s < L - 1; ++s) {
    const float* x = want.RowsF32(0, 0, s, 1, a.data());
    const float* y = spec.mtp_cache().RowsF32(0, 0, s, 1, b.data());
    for (int64_t i = 0; i < want.width(); ++i) worst = std::max(worst, std::fabs(x[i] - y[i]));
  }
  EXPECT_LE(worst, 1e-4f);
}

// MtpContext::ForwardBatch over several sequences with exact products gives each sequence bit
// for bit what Forward gives it alone (steps below kGemmMinTokens); a copied prefix continues like
// the original, a truncated sequence runs its slots again.
TEST_F(SpeculativeTest, BatchedMtpStepsMatchEachSequenceAlone) {
  const int64_t D = model_->config().hidden_size, V = model_->config().vocab_size;
  const int kSeqs = 3;
  const int64_t before[kSeqs] = {6, 2, 9}, now[kSeqs] = {3, 1, 5};  // 9 slots in the batch
  std::vector<std::vector<float>> hidden(kSeqs);
  std::vector<std::vector<int32_t>> next(kSeqs);
  for (int s = 0; s < kSeqs; ++s) {
    const int64_t n = before[s] + now[s];
    for (int64_t i = 0; i < n * D; ++i) hidden[s].push_back(std::sin(0.37f * (i + 1) * (s + 1)));
    for (int64_t i = 0; i < n; ++i) next[s].push_back(static_cast<int32_t>((s * 97 + i * 31) % V));
  }
  MtpContext batch(*model_, 0, {64, 64, AttentionImpl::kAuto, kSeqs});
  for (int s = 0; s < kSeqs; ++s) {
    const MtpContext::Step step{s, hidden[s].data(),
                                std::span<const int32_t>(next[s].data(), before[s])};
    batch.ForwardBatch(std::span<const MtpContext::Step>(&step, 1), nullptr, /*exact=*/false);
  }
  std::vector<MtpContext::Step> steps;
  int64_t T = 0;
  for (int s = kSeqs - 1; s >= 0; --s) {
    steps.push_back({s, hidden[s].data() + before[s] * D,
                     std::span<const int32_t>(next[s].data() + before[s], now[s])});
    T += now[s];
  }
  std::vector<float> logits(kSeqs * V), y(T * D);
  batch.ForwardBatch(steps, logits.data(), /*exact=*/true, {.hidden = y});
  int64_t row = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const int s = steps[i].seq;
    MtpContext alone(*model_, 0, {64, 64, AttentionImpl::kAuto});
    alone.Forward(hidden[s].data(), D, std::span<const int32_t>(next[s].data(), before[s]));
    std::vector<float> want_y(now[s] * D);
    alone.Forward(hidden[s].data() + before[s] * D, D,
                  std::span<const int32_t>(next[s].data() + before[s], now[s]), {.hidden = want_y});
    EXPECT_EQ(std::memcmp(logits.data() + i * V, alone.last_logits(), V * sizeof(float)), 0)
        << "sequence " << s;
    EXPECT_EQ(std::memcmp(y.data() + row * D, want_y.data(), now[s] * D * sizeof(float)), 0)
        << "sequence " << s;
    EXPECT_EQ(batch.n_past(s), before[s] + now[s]);
    row += now[s];
  }
  // Sequence 0 takes 4 slots of sequence 2 and runs 2 more of it; sequence 2, cut back to 4,
  // runs the same 2 again: the same outputs (both continue the same cache rows).
  batch.CopyPrefix(2, 0, 4);
  batch.Truncate(2, 4);
  EXPECT_EQ(batch.n_past(0), 4);
  EXPECT_EQ(batch.n_past(2), 4);
  const std::vector<MtpContext::Step> again = {
      {0, hidden[2].data() + 4 * D, std::span<const int32_t>(next[2].data() + 4, 2)},
      {2, hidden[2].data() + 4 * D, std::span<const int32_t>(next[2].data() + 4, 2)}};
  std::vector<float> twice(2 * V);
  batch.ForwardBatch(again, twice.data(), /*exact=*/true);
  EXPECT_EQ(std::memcmp(twice.data(), twice.data() + V, V * sizeof(float)), 0);
  EXPECT_THROW(
      batch.ForwardBatch(std::vector<MtpContext::Step>{again[0], again[0]}, twice.data(), true),
      Error);  // a sequence twice
}

// A vocabulary of 8 makes distributions easy to compare: the second and third tokens over
// many seeds, plain sampling against speculative sampling, must be the same distribution
// (chi-square homogeneity test, fixed seeds, far from the threshold when correct).
TEST(SpeculativeSampling, SameDistributionAsPlainSampling) {
  test::TempDir dir;
  SynthOptions so;
  so.preset = "tiny";
  so.set = {"vocab_size=8",   "bos_token_id=0",       "eos_token_id=1",
            "hidden_size=64", "intermediate_size=96", "moe_intermediate_size=32",
            "q_lora_rank=32", "kv_lora_rank=32"};
  so.seed = 11;
  so.out_dir = dir.path();
  so.progress = false;
  Synthesize(so);
  const std::unique_ptr<Model> model = Model::Load(dir.path());
  const std::vector<int32_t> prompt = {2, 5, 3};
  const int runs = 3000;
  std::vector<std::vector<double>> plain(2, std::vector<double>(8)),
      spec(2, std::vector<double>(8));
  const ContextOptions o{8, 8, AttentionImpl::kAuto};
  GenerateOptions g;
  g.max_new_tokens = 3;
  g.stop_at_eos = false;
  for (int i = 0; i < runs; ++i) {
    g.sampling = {1.0f, 1.0f, 0, static_cast<uint64_t>(i)};
    Context a(*model, o);
    const std::vector<int32_t> p = Generate(a, prompt, g);
    g.sampling.seed = 1000000 + i;
    Context b(*model, o);
    SpeculativeDecoder d(*model, o, 2);
    const std::vector<int32_t> s = Generate(b, prompt, g, nullptr, {}, &d);
    for (int j = 0; j < 2; ++j) {
      plain[j][p[j + 1]] += 1;
      spec[j][s[j + 1]] += 1;
    }
  }
  for (int j = 0; j < 2; ++j) {
    double chi2 = 0;
    int df = -1;
    for (int v = 0; v < 8; ++v) {
      const double total = plain[j][v] + spec[j][v];
      if (total == 0) continue;
      ++df;
      const double e = total / 2;  // equal sample sizes
      chi2 += (plain[j][v] - e) * (plain[j][v] - e) / e + (spec[j][v] - e) * (spec[j][v] - e) / e;
    }
    ASSERT_GE(df, 2) << "degenerate distribution";
    EXPECT_LT(chi2, 24.3) << "token " << j + 2 << " (df " << df << ")";  // p = 0.001 at df 7
  }
}

}  // namespace
}  // namespace dsv3
