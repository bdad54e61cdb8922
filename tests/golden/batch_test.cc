// Several sequences in one forward pass (Context::ForwardBatch, for serving): decode steps of
// many sequences batched together give bit for bit the logits each gets alone, as do steps of
// several tokens each (speculative verification) with every token's logits and hidden states;
// mixed prompt and decode batches agree within float noise; prefix copies continue like the
// original.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/matmul.h"
#include "model/model.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

class BatchTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = test::TestData("models/" + GetParam());
    DSV3_REQUIRE_DATA(dir + "/config.json");
    model_ = Model::Load(dir);
  }
  std::vector<int32_t> Prompt(int seq, int length) const {
    std::vector<int32_t> p(length);
    for (int i = 0; i < length; ++i) p[i] = (seq * 131 + i * 17 + 3) % model_->config().vocab_size;
    return p;
  }
  std::unique_ptr<Model> model_;
};

TEST_P(BatchTest, BatchedDecodeIsBitIdenticalToDecodingAlone) {
  const int64_t V = model_->config().vocab_size;
  // More sequences than kGemmMinTokens: a plain batched product would change the numbers.
  const int kSeqs = 10, kSteps = 12;
  const int lengths[kSeqs] = {3, 9, 1, 17, 40, 2, 8, 11, 5, 30};
  // Alone: one context per sequence, prompt then greedy decode.
  std::vector<std::vector<float>> alone(kSeqs);
  std::vector<std::vector<int32_t>> tokens(kSeqs);
  for (int s = 0; s < kSeqs; ++s) {
    Context ctx(*model_, {64, 64, AttentionImpl::kAuto});
    ctx.Forward(Prompt(s, lengths[s]));
    for (int k = 0; k < kSteps; ++k) {
      alone[s].insert(alone[s].end(), ctx.last_logits(), ctx.last_logits() + V);
      int32_t next = 0;
      for (int64_t v = 1; v < V; ++v)
        next = ctx.last_logits()[v] > ctx.last_logits()[next] ? v : next;
      tokens[s].push_back(next);
      ctx.Forward(std::span<const int32_t>(&tokens[s].back(), 1));
    }
  }
  // Together: prompts one slot at a time, then every decode step for all slots in one batch.
  Context batch(*model_, {64, 64, AttentionImpl::kAuto, kSeqs});
  static_assert(kSeqs > kernels::kGemmMinTokens);
  std::vector<float> logits(kSeqs * V);
  std::vector<std::vector<int32_t>> prompts(kSeqs);
  for (int s = 0; s < kSeqs; ++s) {
    prompts[s] = Prompt(s, lengths[s]);
    const Context::Step step{s, prompts[s]};
    batch.ForwardBatch(std::span<const Context::Step>(&step, 1), logits.data() + s * V,
                       /*exact=*/false);
  }
  for (int k = 0; k < kSteps; ++k) {
    for (int s = 0; s < kSeqs; ++s) {
      ASSERT_EQ(std::memcmp(logits.data() + s * V, alone[s].data() + k * V, V * sizeof(float)), 0)
          << "sequence " << s << " step " << k;
    }
    std::vector<Context::Step> steps;
    for (int s = kSeqs - 1; s >= 0; --s)
      steps.push_back({s, std::span<const int32_t>(&tokens[s][k], 1)});
    std::vector<float> out(kSeqs * V);
    batch.ForwardBatch(steps, out.data());
    for (int i = 0; i < kSeqs; ++i) {
      std::copy_n(out.data() + i * V, V, logits.data() + steps[i].slot * V);
    }
  }
  for (int s = 0; s < kSeqs; ++s) EXPECT_EQ(batch.n_past(s), lengths[s] + kSteps);
}

// A verification pass of the serving scheduler: each sequence feeds a few tokens (its last one
// and its drafts); every token's logits and final hidden states equal bit for bit those of the
// same tokens run alone (fewer than kGemmMinTokens: the decode path), and the per-step rows
// are the steps' last.
TEST_P(BatchTest, StepsOfSeveralTokensGiveEveryTokensOutputsExactly) {
  const int64_t V = model_->config().vocab_size, D = model_->config().hidden_size;
  const int kSeqs = 4;
  const int lengths[kSeqs] = {5, 1, 12, 7}, fed[kSeqs] = {3, 1, 7, 5};
  Context batch(*model_, {64, 64, AttentionImpl::kAuto, kSeqs});
  std::vector<float> last(kSeqs * V);
  std::vector<std::vector<int32_t>> prompts(kSeqs), more(kSeqs);
  std::vector<Context::Step> steps;
  int64_t T = 0;
  for (int s = 0; s < kSeqs; ++s) {
    prompts[s] = Prompt(s, lengths[s]);
    more[s] = Prompt(s + 10, fed[s]);
    const Context::Step step{s, prompts[s]};
    batch.ForwardBatch(std::span<const Context::Step>(&step, 1), last.data(), /*exact=*/false);
    T += fed[s];
  }
  for (int s = kSeqs - 1; s >= 0; --s) steps.push_back({s, more[s]});
  std::vector<float> logits(T * V), hidden(T * D);
  batch.ForwardBatch(steps, last.data(), /*exact=*/true, {.logits = logits, .hidden = hidden});
  int64_t row = 0;
  for (const Context::Step& step : steps) {
    const int s = step.slot, n = fed[s];
    Context alone(*model_, {64, 64, AttentionImpl::kAuto});
    alone.Forward(prompts[s]);
    std::vector<float> want_logits(n * V), want_hidden(n * D);
    alone.Forward(more[s], {.logits = want_logits, .hidden = want_hidden});
    EXPECT_EQ(std::memcmp(logits.data() + row * V, want_logits.data(), n * V * sizeof(float)), 0)
        << "sequence " << s;
    EXPECT_EQ(std::memcmp(hidden.data() + row * D, want_hidden.data(), n * D * sizeof(float)), 0)
        << "sequence " << s;
    const int64_t i = &step - steps.data();
    EXPECT_EQ(std::memcmp(last.data() + i * V, want_logits.data() + (n - 1) * V, V * sizeof(float)),
              0)
        << "sequence " << s;
    EXPECT_EQ(batch.n_past(s), lengths[s] + n);
    row += n;
  }
  // Outputs too small for the batch are refused before anything runs.
  std::vector<float> small((T - 1) * V);
  EXPECT_THROW(batch.ForwardBatch(steps, nullptr, true, {.logits = small}), Error);
  EXPECT_THROW(batch.ForwardBatch(steps, nullptr, true, {.hidden = hidden}), Error);  // no logits
  EXPECT_EQ(batch.n_past(0), lengths[0] + fed[0]);
}

TEST_P(BatchTest, MixedPromptAndDecodeBatchAgrees) {
  const int64_t V = model_->config().vocab_size;
  const std::vector<int32_t> a = Prompt(1, 20), b = Prompt(2, 6), b_next = {7};
  Context ref(*model_, {64, 64, AttentionImpl::kAuto});
  ref.Forward(b);
  ref.Forward(b_next);
  std::vector<float> want_b(ref.last_logits(), ref.last_logits() + V);
  Context ref_a(*model_, {64, 64, AttentionImpl::kAuto});
  ref_a.Forward(a);
  Context batch(*model_, {64, 64, AttentionImpl::kAuto, 2});
  const Context::Step first{1, b};
  std::vector<float> out(2 * V);
  batch.ForwardBatch(std::span<const Context::Step>(&first, 1), out.data(), false);
  const std::vector<Context::Step> mixed = {{0, a}, {1, b_next}};  // a prompt and a decode step
  batch.ForwardBatch(mixed, out.data(), /*exact=*/false);
  float worst = 0;
  for (int64_t v = 0; v < V; ++v) {
    worst = std::max(worst, std::fabs(out[v] - ref_a.last_logits()[v]));
    worst = std::max(worst, std::fabs(out[V + v] - want_b[v]));
  }
  EXPECT_LE(worst, 1e-4f);
}

TEST_P(BatchTest, CopiedPrefixContinuesLikeTheOriginal) {
  const int64_t V = model_->config().vocab_size;
  const std::vector<int32_t> p = Prompt(3, 12), rest = {5, 6, 7};
  Context ctx(*model_, {64, 64, AttentionImpl::kAuto, 2});
  const Context::Step step{0, p};
  std::vector<float> out(V), copied(V);
  ctx.ForwardBatch(std::span<const Context::Step>(&step, 1), out.data(), false);
  ctx.CopyPrefix(0, 1, 8);  // slot 1: the first 8 tokens of slot 0
  EXPECT_EQ(ctx.n_past(1), 8);
  std::vector<int32_t> tail(p.begin() + 8, p.end());
  tail.insert(tail.end(), rest.begin(), rest.end());
  std::vector<int32_t> full = p;
  full.insert(full.end(), rest.begin(), rest.end());
  const Context::Step s1{1, tail};
  ctx.ForwardBatch(std::span<const Context::Step>(&s1, 1), copied.data(), false);
  Context fresh(*model_, {64, 64, AttentionImpl::kAuto});
  fresh.Forward(full);
  float worst = 0;
  for (int64_t v = 0; v < V; ++v)
    worst = std::max(worst, std::fabs(copied[v] - fresh.last_logits()[v]));
  EXPECT_LE(worst, 1e-4f);
}

TEST_P(BatchTest, BadBatchesAreErrors) {
  Context ctx(*model_, {16, 8, AttentionImpl::kAuto, 2});
  const std::vector<int32_t> one = {1}, nine(9, 1),
                             bad = {static_cast<int32_t>(model_->config().vocab_size)};
  std::vector<float> out(2 * model_->config().vocab_size);
  auto run = [&](std::vector<Context::Step> steps) { ctx.ForwardBatch(steps, out.data()); };
  EXPECT_THROW(run({{0, one}, {0, one}}), Error);  // a slot twice
  EXPECT_THROW(run({{2, one}}), Error);            // no such slot
  EXPECT_THROW(run({{0, nine}}), Error);           // more than max_batch
  EXPECT_THROW(run({{1, bad}}), Error);            // id beyond the vocabulary
  EXPECT_EQ(ctx.n_past(0), 0);
  EXPECT_EQ(ctx.n_past(1), 0);
}

INSTANTIATE_TEST_SUITE_P(Models, BatchTest, ::testing::Values("v3-tiny", "v2lite-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace dsv3
