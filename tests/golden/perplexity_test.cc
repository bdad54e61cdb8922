// Perplexity (src/runtime/perplexity.h) against DeepSeek's reference implementation: the
// cross-entropy of each reference sequence, computed here in double from the reference's own
// prefill logits (../shared/testdata/models/*/reference.json), equals dsv3's figure for one
// window over the sequence. Several windows equal the windows run one by one.
#include "runtime/perplexity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "core/error.h"
#include "model/model.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

// Mean over positions 0 .. L-2 of -log softmax(logits[i])[tokens[i + 1]].
double ReferenceCrossEntropy(const std::vector<float>& logits, const std::vector<int32_t>& tokens,
                             int64_t V) {
  const int64_t L = static_cast<int64_t>(tokens.size());
  double sum = 0;
  for (int64_t i = 0; i + 1 < L; ++i) {
    const float* row = logits.data() + i * V;
    double m = row[0], z = 0;
    for (int64_t v = 1; v < V; ++v) m = std::max<double>(m, row[v]);
    for (int64_t v = 0; v < V; ++v) z += std::exp(row[v] - m);
    sum += std::log(z) + m - row[tokens[i + 1]];
  }
  return sum / (L - 1);
}

class PerplexityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PerplexityTest, OneWindowMatchesTheReferenceLogits) {
  const std::string dir = test::TestData("models/" + GetParam());
  DSV3_REQUIRE_DATA(dir + "/reference.json");
  const std::unique_ptr<Model> model = Model::Load(dir);
  const test::Reference ref(dir);
  const int64_t V = model->config().vocab_size;
  int checked = 0;
  for (const Json& seq : ref.json()["sequences"]) {
    const std::vector<int32_t> tokens = seq["tokens"].get<std::vector<int32_t>>();
    const int64_t L = static_cast<int64_t>(tokens.size());
    if (L < 2) continue;
    const double want = ReferenceCrossEntropy(ref.F32(seq["prefill_logits"]), tokens, V);
    for (int64_t chunk : {L - 1, int64_t{16}}) {
      PerplexityOptions o;
      o.ctx = L - 1;
      o.chunk = chunk;
      const PerplexityResult r = Perplexity(*model, tokens, o);
      EXPECT_EQ(r.windows, 1);
      EXPECT_EQ(r.scored, L - 1);
      // Logits agree within 1e-4 absolute (the golden tolerance); the mean cross-entropy of a
      // few nats then agrees within ~1e-5 relative.
      EXPECT_NEAR(r.mean_ce, want, 1e-5 * want) << seq["name"] << ", chunk " << chunk;
      EXPECT_NEAR(r.perplexity(), std::exp(want), 1e-5 * std::exp(want));
    }
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

TEST_P(PerplexityTest, WindowsAreIndependentAndThePartialOneIsDropped) {
  const std::string dir = test::TestData("models/" + GetParam());
  DSV3_REQUIRE_DATA(dir + "/config.json");
  const std::unique_ptr<Model> model = Model::Load(dir);
  const int64_t V = model->config().vocab_size, ctx = 24;
  std::vector<int32_t> ids(3 * ctx + 10);  // three full windows and a partial one
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 3) % V);
  PerplexityOptions o;
  o.ctx = ctx;
  o.chunk = 7;
  std::vector<double> seen;
  const PerplexityResult all = Perplexity(*model, ids, o, [&](int64_t w, double running) {
    seen.push_back(running);
    EXPECT_EQ(static_cast<int64_t>(seen.size()), w + 1);
  });
  ASSERT_EQ(all.windows, 3);
  EXPECT_EQ(all.scored, 3 * ctx);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_DOUBLE_EQ(seen.back(), all.mean_ce);
  double sum = 0;
  for (int64_t w = 0; w < 3; ++w) {
    const std::vector<int32_t> one(ids.begin() + w * ctx, ids.begin() + w * ctx + ctx + 1);
    PerplexityOptions single = o;
    single.chunk = ctx;
    const PerplexityResult r = Perplexity(*model, one, single);
    ASSERT_EQ(r.windows, 1);
    EXPECT_NEAR(all.window_ce[w], r.mean_ce, 1e-6 * r.mean_ce) << "window " << w;
    sum += r.mean_ce;
  }
  EXPECT_NEAR(all.mean_ce, sum / 3, 1e-6 * all.mean_ce);
  EXPECT_GT(all.stderr_ce, 0);
  o.max_windows = 2;
  EXPECT_EQ(Perplexity(*model, ids, o).windows, 2);
}

TEST_P(PerplexityTest, TooShortTextAndTooLongWindowsAreErrors) {
  const std::string dir = test::TestData("models/" + GetParam());
  DSV3_REQUIRE_DATA(dir + "/config.json");
  const std::unique_ptr<Model> model = Model::Load(dir);
  const std::vector<int32_t> ids(10, 1);
  PerplexityOptions o;
  o.ctx = 10;
  EXPECT_THROW(Perplexity(*model, ids, o), Error);  // 10 tokens, a window needs 11
  o.ctx = model->config().max_position_embeddings;
  EXPECT_THROW(Perplexity(*model, std::vector<int32_t>(o.ctx + 1, 1), o), Error);
  o.ctx = 0;
  EXPECT_THROW(Perplexity(*model, ids, o), Error);
}

INSTANTIATE_TEST_SUITE_P(Models, PerplexityTest, ::testing::Values("v3-tiny", "v2lite-tiny"));

}  // namespace
}  // namespace dsv3
