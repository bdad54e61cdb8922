// Golden tests: dsv3's forward pass against DeepSeek's reference implementation (model.py, float32)
// on the tiny checkpoints in ../shared/testdata/models: logits after prefill and after step-by-step
// decode, greedy continuations, routing decisions, intermediates, on every compiled SIMD target.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "core/parallel.h"
#include "kernels/targets.h"
#include "model/model.h"
#include "model/mtp.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "tests/kernels_reference.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

using test::Reference;

constexpr float kLogitTol = 1e-4f;  // the reference's own float32 noise is ~1e-5

float MaxAbsDiff(const float* a, const float* b, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

struct Fixture {
  std::unique_ptr<Model> model;
  std::unique_ptr<Reference> ref;
};

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = test::TestData("models/" + GetParam());
    DSV3_REQUIRE_DATA(dir_ + "/reference.json");
    static std::map<std::string, Fixture> cache;
    Fixture& f = cache[GetParam()];
    if (!f.model) {
      f.model = Model::Load(dir_);
      f.ref = std::make_unique<Reference>(dir_);
    }
    model_ = f.model.get();
    ref_ = f.ref.get();
  }
  void TearDown() override { kernels::ForceTarget(""); }

  const Json& Sequence(int64_t length) const {
    for (const Json& s : ref_->json()["sequences"]) {
      if (s["length"] == length) return s;
    }
    throw std::runtime_error("no sequence of that length");
  }
  static std::vector<int32_t> Tokens(const Json& seq) {
    return seq["tokens"].get<std::vector<int32_t>>();
  }

  // Prefill of the whole sequence (in chunks of max_batch); checks logits and routing.
  void CheckPrefill(const Json& seq, int64_t max_batch, AttentionImpl attention) {
    const std::vector<int32_t> tokens = Tokens(seq);
    const int64_t L = static_cast<int64_t>(tokens.size()), V = model_->config().vocab_size;
    Context ctx(*model_, {L, max_batch, attention});
    std::vector<float> logits(L * V);
    ForwardTrace trace;
    ctx.Forward(tokens, {.logits = logits}, &trace);
    const std::vector<float> expected = ref_->F32(seq["prefill_logits"]);
    EXPECT_LE(MaxAbsDiff(logits.data(), expected.data(), L * V), kLogitTol)
        << seq["name"] << " prefill, max_batch " << max_batch << ", " << kernels::ActiveTarget();
    CheckRouting(seq, trace);
  }

  void CheckRouting(const Json& seq, const ForwardTrace& trace) {
    const int64_t K = model_->config().num_experts_per_tok;
    ASSERT_EQ(trace.routing.size(), seq["router"].size());
    for (size_t i = 0; i < trace.routing.size(); ++i) {
      const Json& r = seq["router"][i];
      EXPECT_EQ(trace.routing[i].layer, r["layer"].get<int64_t>());
      const std::vector<int32_t> idx = ref_->I32(r["indices"]);
      const std::vector<float> wts = ref_->F32(r["weights"]);
      ASSERT_EQ(trace.routing[i].indices.size(), idx.size());
      for (size_t t = 0; t * K < idx.size(); ++t) {
        std::map<int32_t, float> want, got;
        for (int64_t k = 0; k < K; ++k) {
          want[idx[t * K + k]] = wts[t * K + k];
          got[trace.routing[i].indices[t * K + k]] = trace.routing[i].weights[t * K + k];
        }
        ASSERT_EQ(std::set<int32_t>(idx.begin() + t * K, idx.begin() + (t + 1) * K).size(),
                  size_t(K));
        for (const auto& [e, w] : want) {
          ASSERT_TRUE(got.count(e)) << seq["name"] << " layer " << r["layer"] << " token " << t
                                    << ": expert " << e << " not selected";
          EXPECT_NEAR(got[e], w, 1e-5) << "routing weight, token " << t << " expert " << e;
        }
      }
    }
  }

  void CheckDecode(const Json& seq) {
    const std::vector<int32_t> tokens = Tokens(seq);
    const int64_t L = static_cast<int64_t>(tokens.size()), V = model_->config().vocab_size;
    Context ctx(*model_, {L, 1, AttentionImpl::kAbsorbed});
    const std::vector<float> expected = ref_->F32(seq["decode_logits"]);
    float worst = 0;
    for (int64_t i = 0; i < L; ++i) {
      ctx.Forward(std::span<const int32_t>(&tokens[i], 1));
      worst = std::max(worst, MaxAbsDiff(ctx.last_logits(), expected.data() + i * V, V));
    }
    EXPECT_LE(worst, kLogitTol) << seq["name"] << " decode, " << kernels::ActiveTarget();
  }

  std::string dir_;
  const Model* model_ = nullptr;
  const Reference* ref_ = nullptr;
};

TEST_P(GoldenTest, PrefillLogitsAndRouting) {
  for (const Json& seq : ref_->json()["sequences"]) {
    for (AttentionImpl impl : {AttentionImpl::kAuto, AttentionImpl::kAbsorbed}) {
      CheckPrefill(seq, /*max_batch=*/seq["length"].get<int64_t>(), impl);
    }
  }
}

// Beyond the reference sequences: 700 tokens span several attention blocks, so the absorbed decode
// splits the cache across threads and merges partial softmaxes, and the expanded prefill runs
// several key blocks. The two forms are independent; they must agree everywhere.
TEST_P(GoldenTest, LongSequenceFormsAgree) {
  const int64_t L = 700, V = model_->config().vocab_size;
  std::vector<int32_t> tokens(L);
  for (int64_t i = 0; i < L; ++i) tokens[i] = static_cast<int32_t>((i * 7919 + 13) % V);
  std::vector<float> expanded(L * V), absorbed(L * V);
  Context e(*model_, {L, L, AttentionImpl::kExpanded});
  e.Forward(tokens, {.logits = expanded});
  Context a(*model_, {L, 1, AttentionImpl::kAbsorbed});
  for (int64_t i = 0; i < L; ++i) {
    a.Forward(std::span<const int32_t>(&tokens[i], 1));
    std::copy_n(a.last_logits(), V, absorbed.begin() + i * V);
  }
  EXPECT_LE(MaxAbsDiff(expanded.data(), absorbed.data(), L * V), kLogitTol);
  Context chunked(*model_, {L, 96, AttentionImpl::kAuto});  // chunks at non-zero start positions
  std::vector<float> auto_logits(L * V);
  chunked.Forward(tokens, {.logits = auto_logits});
  EXPECT_LE(MaxAbsDiff(expanded.data(), auto_logits.data(), L * V), kLogitTol);
}

// A BF16 latent cache: the same model with each cached value rounded to BF16 (as DeepSeek's own
// inference code keeps it). Rounding is a step function, so float32 noise between two code paths
// (~1e-7 relative in a latent) flips the rounding of the few values that sit next to a step by one
// BF16 unit (2^-8 relative): paths that compute the latents differently agree to ~1e-3, not 1e-5.
// (A layer's attention noise changes the next layer's latents, so this holds even between two
// attention kernels; the precise check of the AMX kernel is in kernels_test.) Checked with that
// allowance: AMX decode (the tile kernel, over several threads' blocks) against AVX3 decode (rows
// converted to float32 for the float32 kernels), the expanded prefill against the absorbed decode,
// and every SIMD target against the first; against the float32 reference the rounding moves logits
// by ~1e-2 and a near-tied expert choice can flip, so that check is loose: most positions within
// 0.1.
TEST_P(GoldenTest, Bf16KvCache) {
  constexpr float kRoundingTol = 5e-3f;
  const int64_t L = 300, V = model_->config().vocab_size;
  std::vector<int32_t> tokens(L);
  for (int64_t i = 0; i < L; ++i) tokens[i] = static_cast<int32_t>((i * 7919 + 13) % V);
  auto decode = [&](const std::vector<int32_t>& toks) {
    const int64_t n = static_cast<int64_t>(toks.size());
    Context ctx(*model_, {n, 1, AttentionImpl::kAbsorbed, 1, KvCacheType::kBF16});
    EXPECT_EQ(ctx.cache().bytes_per_token(),
              model_->config().num_hidden_layers * model_->config().kv_width() * 2);
    std::vector<float> out(n * V);
    for (int64_t i = 0; i < n; ++i) {
      ctx.Forward(std::span<const int32_t>(&toks[i], 1));
      std::copy_n(ctx.last_logits(), V, out.begin() + i * V);
    }
    return out;
  };
  const std::vector<float> absorbed = decode(tokens);
  const std::vector<std::string> targets = kernels::AvailableTargets();
  if (targets.front() == "AMX") {
    ASSERT_TRUE(kernels::ForceTarget("AVX3"));
    const std::vector<float> avx3 = decode(tokens);
    EXPECT_LE(MaxAbsDiff(avx3.data(), absorbed.data(), L * V), kRoundingTol) << "AMX vs AVX3";
    kernels::ForceTarget("");
  }
  std::vector<float> expanded(L * V);
  Context e(*model_, {L, L, AttentionImpl::kExpanded, 1, KvCacheType::kBF16});
  e.Forward(tokens, {.logits = expanded});
  EXPECT_LE(MaxAbsDiff(expanded.data(), absorbed.data(), L * V), kRoundingTol);

  const Json& seq = Sequence(33);
  const std::vector<int32_t> ref_tokens = Tokens(seq);
  const std::vector<float> expected = ref_->F32(seq["decode_logits"]);
  std::vector<float> first;
  for (const std::string& t : targets) {
    ASSERT_TRUE(kernels::ForceTarget(t));
    const std::vector<float> got = decode(ref_tokens);
    if (first.empty()) first = got;
    EXPECT_LE(MaxAbsDiff(got.data(), first.data(), 33 * V), kRoundingTol) << t;
    int close = 0;
    for (int64_t i = 0; i < 33; ++i)
      close += MaxAbsDiff(got.data() + i * V, expected.data() + i * V, V) <= 0.1f;
    EXPECT_GE(close, 30) << t;
  }
}

// --matmul bf16: on AMX the prompt's products round activations to BF16 (2^-9) and the absorbed
// attention over a BF16 cache takes one part of its queries and probabilities, so the logits move
// like those of a BF16 cache; every other target computes in float32 and still meets kLogitTol.
TEST_P(GoldenTest, Bf16MatMulPrecision) {
  const kernels::MatMulPrecision bf16 = kernels::MatMulPrecision::kBF16;
  const Json& seq = Sequence(33);
  const std::vector<int32_t> tokens = Tokens(seq);
  const int64_t L = static_cast<int64_t>(tokens.size()), V = model_->config().vocab_size;
  const std::vector<float> prefill_ref = ref_->F32(seq["prefill_logits"]);
  const std::vector<float> decode_ref = ref_->F32(seq["decode_logits"]);
  auto close_positions = [&](const std::vector<float>& got, const std::vector<float>& want) {
    int close = 0;
    for (int64_t i = 0; i < L; ++i)
      close += MaxAbsDiff(got.data() + i * V, want.data() + i * V, V) <= 0.1f;
    return close;
  };
  for (const std::string& t : kernels::AvailableTargets()) {
    ASSERT_TRUE(kernels::ForceTarget(t));
    Context ctx(*model_, {L, L, AttentionImpl::kAbsorbed, 1, KvCacheType::kF32, bf16});
    std::vector<float> prefill(L * V);
    ctx.Forward(tokens, {.logits = prefill});
    Context dec(*model_, {L, 1, AttentionImpl::kAbsorbed, 1, KvCacheType::kBF16, bf16});
    std::vector<float> decode(L * V);
    for (int64_t i = 0; i < L; ++i) {
      dec.Forward(std::span<const int32_t>(&tokens[i], 1));
      std::copy_n(dec.last_logits(), V, decode.begin() + i * V);
    }
    EXPECT_GE(close_positions(decode, decode_ref), 30) << t;
    if (t == "AMX") {
      const float d = MaxAbsDiff(prefill.data(), prefill_ref.data(), L * V);
      EXPECT_GT(d, kLogitTol) << "BF16 activations should move the logits";
      EXPECT_GE(close_positions(prefill, prefill_ref), 30);
    } else {
      EXPECT_LE(MaxAbsDiff(prefill.data(), prefill_ref.data(), L * V), kLogitTol) << t;
    }
  }
}

// LoadOptions::fp8_lm_head: the logits are the FP8 head (QuantizeFp8Blocks of the stored one)
// applied to the final hidden state, within float32 accumulation, on every target; they move
// away from the reference (the head is no longer the checkpoint's) but stay within the bound of
// the quantization (half an E4M3 step per weight: |dlogit| <= 2^-4 sum |w h| plus the subnormal
// steps), and an MTP module that shares the head shares the FP8 one.
TEST_P(GoldenTest, Fp8LmHead) {
  const kernels::WeightMatrix& stored = model_->weights().lm_head;
  const std::unique_ptr<Model> fp8 = Model::Load(dir_, nullptr, {.fp8_lm_head = true});
  const kernels::WeightMatrix& head = fp8->weights().lm_head;
  ASSERT_EQ(head.dtype, DType::kF8E4M3);
  if (stored.dtype == DType::kF8E4M3) GTEST_SKIP() << "the head is stored in FP8";
  const std::unique_ptr<kernels::Fp8Weights> want = kernels::QuantizeFp8Blocks(stored);
  ASSERT_EQ(std::memcmp(head.data, want->codes.data(), want->codes.size()), 0);
  ASSERT_EQ(std::memcmp(head.scale, want->scales.data(), want->scales.size() * 4), 0);
  for (const MtpWeights& m : fp8->mtp()) {
    if (m.shares_head) {
      EXPECT_EQ(m.head.data, head.data);
    }
  }
  const Json& seq = Sequence(33);
  const std::vector<int32_t> tokens = Tokens(seq);
  const int64_t L = static_cast<int64_t>(tokens.size()), V = model_->config().vocab_size;
  const int64_t D = model_->config().hidden_size;
  const std::vector<float> ref = ref_->F32(seq["prefill_logits"]);
  for (const std::string& t : kernels::AvailableTargets()) {
    ASSERT_TRUE(kernels::ForceTarget(t));
    Context ctx(*fp8, {L, L, AttentionImpl::kAbsorbed});
    std::vector<float> logits(L * V), hidden(L * D);
    ctx.Forward(tokens, {.logits = logits, .hidden = hidden});
    float moved = 0;
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t v = 0; v < V; ++v) {
        double exact = 0, magnitude = 0, stored_magnitude = 0;
        for (int64_t d = 0; d < D; ++d) {
          const double w = E4M3ToF32(want->codes[v * D + d]) *
                           static_cast<double>(want->scales[(v / 128) * head.scale_cols + d / 128]);
          exact += w * hidden[i * D + d];
          magnitude += std::fabs(w * hidden[i * D + d]);
          stored_magnitude += std::fabs(hidden[i * D + d]) *
                              (std::fabs(kernels::reference::WeightAt(stored, v, d)) * 0x1p-4 +
                               want->scales[(v / 128) * head.scale_cols + d / 128] * 0x1p-10);
        }
        const float got = logits[i * V + v];
        ASSERT_NEAR(got, exact, 1e-5 * magnitude + 1e-6) << t << " position " << i << " id " << v;
        ASSERT_NEAR(got, ref[i * V + v], stored_magnitude + kLogitTol) << t << " " << i << " " << v;
        moved = std::max(moved, std::fabs(got - ref[i * V + v]));
      }
    }
    EXPECT_GT(moved, kLogitTol) << "the FP8 head should move the logits";
  }
}

// Precision is a per-context value, not process state: an exact context and a BF16 one (BF16
// cache, BF16 activations) in one process, their prompt chunks interleaved, each give what it
// gives alone; the exact one meets the reference's tolerance and, on AMX, the BF16 one does not.
TEST_P(GoldenTest, ContextsInOneProcessKeepTheirOwnPrecision) {
  const Json& seq = Sequence(33);
  const std::vector<int32_t> tokens = Tokens(seq);
  const int64_t L = static_cast<int64_t>(tokens.size()), V = model_->config().vocab_size;
  const std::vector<float> want = ref_->F32(seq["prefill_logits"]);
  const ContextOptions exact_opts{L, L, AttentionImpl::kAbsorbed};
  const ContextOptions bf16_opts{
      L, L, AttentionImpl::kAbsorbed, 1, KvCacheType::kBF16, kernels::MatMulPrecision::kBF16};
  const std::span<const int32_t> all(tokens);
  const int64_t half = 16;  // prompt chunks of 16 and 17 tokens: the blocked (AMX) products
  for (const std::string& t : kernels::AvailableTargets()) {
    ASSERT_TRUE(kernels::ForceTarget(t));
    Context exact(*model_, exact_opts), bf16(*model_, bf16_opts);
    std::vector<float> exact_logits(L * V), bf16_logits(L * V);
    auto rows = [&](std::vector<float>& v, int64_t from, int64_t n) {
      return std::span<float>(v.data() + from * V, n * V);
    };
    exact.Forward(all.first(half), {.logits = rows(exact_logits, 0, half)});
    bf16.Forward(all.first(half), {.logits = rows(bf16_logits, 0, half)});
    exact.Forward(all.subspan(half), {.logits = rows(exact_logits, half, L - half)});
    bf16.Forward(all.subspan(half), {.logits = rows(bf16_logits, half, L - half)});
    Context alone(*model_, bf16_opts);
    std::vector<float> alone_logits(L * V);
    alone.Forward(all.first(half), {.logits = rows(alone_logits, 0, half)});
    alone.Forward(all.subspan(half), {.logits = rows(alone_logits, half, L - half)});
    EXPECT_LE(MaxAbsDiff(exact_logits.data(), want.data(), L * V), kLogitTol) << t;
    EXPECT_EQ(MaxAbsDiff(bf16_logits.data(), alone_logits.data(), L * V), 0.0f) << t;
    if (t == "AMX") {
      EXPECT_GT(MaxAbsDiff(bf16_logits.data(), want.data(), L * V), kLogitTol) << t;
    }
  }
}

TEST_P(GoldenTest, DecodeLogits) {
  for (const Json& seq : ref_->json()["sequences"]) CheckDecode(seq);
}

TEST_P(GoldenTest, ChunkedPrefillMatchesOnePass) {
  CheckPrefill(Sequence(200), /*max_batch=*/64, AttentionImpl::kAbsorbed);
  CheckPrefill(Sequence(33), /*max_batch=*/5, AttentionImpl::kAbsorbed);
}

TEST_P(GoldenTest, ExpandedAttentionAgreesWithAbsorbed) {
  for (int64_t length : {7, 33, 200}) {
    const Json& seq = Sequence(length);
    CheckPrefill(seq, length, AttentionImpl::kExpanded);
    const std::vector<int32_t> tokens = Tokens(seq);
    const int64_t L = length, V = model_->config().vocab_size;
    std::vector<float> absorbed(L * V), expanded(L * V);
    Context a(*model_, {L, L, AttentionImpl::kAbsorbed});
    Context e(*model_, {L, L, AttentionImpl::kExpanded});
    a.Forward(tokens, {.logits = absorbed});
    e.Forward(tokens, {.logits = expanded});
    EXPECT_LE(MaxAbsDiff(absorbed.data(), expanded.data(), L * V), 2e-5f) << "length " << L;
  }
}

TEST_P(GoldenTest, GreedyContinuation) {
  for (const Json& seq : ref_->json()["sequences"]) {
    const std::vector<int32_t> prompt = Tokens(seq);
    const std::vector<int32_t> want = seq["greedy"]["new_tokens"].get<std::vector<int32_t>>();
    const std::vector<float> step_logits = ref_->F32(seq["greedy"]["step_logits"]);
    const int64_t V = model_->config().vocab_size, n = static_cast<int64_t>(want.size());
    Context ctx(*model_, {static_cast<int64_t>(prompt.size()) + n, 512, AttentionImpl::kAbsorbed});
    GenerateOptions g;
    g.max_new_tokens = n;
    g.stop_at_eos = false;
    int64_t step = 0;
    float worst = 0;
    const std::vector<int32_t> got = Generate(ctx, prompt, g, nullptr, [&](int32_t) {
      worst = std::max(worst, MaxAbsDiff(ctx.last_logits(), step_logits.data() + step * V, V));
      ++step;
      return true;
    });
    EXPECT_EQ(got, want) << seq["name"];
    EXPECT_LE(worst, kLogitTol) << seq["name"] << " step logits";
  }
}

TEST_P(GoldenTest, Intermediates) {
  const Json& seq = Sequence(33);
  const std::vector<int32_t> tokens = Tokens(seq);
  std::map<std::string, std::vector<float>> got;
  std::map<std::string, int64_t> cols;
  ForwardTrace trace;
  trace.tensor = [&](const std::string& name, const float* data, int64_t rows, int64_t c,
                     int64_t stride) {
    std::vector<float>& v = got[name];
    for (int64_t r = 0; r < rows; ++r) v.insert(v.end(), data + r * stride, data + r * stride + c);
    cols[name] = c;
  };
  Context ctx(*model_, {33, 33, AttentionImpl::kAbsorbed});
  ctx.Forward(tokens, {}, &trace);
  int checked = 0;
  for (const auto& [name, entry] : seq["intermediates"].items()) {
    ASSERT_TRUE(got.count(name)) << "no intermediate named " << name;
    const std::vector<float> want = ref_->F32(entry);
    ASSERT_EQ(got[name].size(), want.size()) << name;
    float scale = 1;
    for (float v : want) scale = std::max(scale, std::fabs(v));
    EXPECT_LE(MaxAbsDiff(got[name].data(), want.data(), static_cast<int64_t>(want.size())),
              1e-5f * scale)
        << name << " (max |ref| " << scale << ")";
    ++checked;
  }
  EXPECT_GE(checked, 15);
}

// The MTP module: slot i from the main final hidden state at i and token i+1 (the last slot uses
// the main model's greedy token), against the reference's MTP logits and intermediates.
TEST_P(GoldenTest, MtpLogits) {
  if (model_->mtp().empty()) {
    EXPECT_EQ(model_->config().num_nextn_predict_layers, 0);
    return;
  }
  EXPECT_TRUE(model_->mtp()[0].shares_embed);  // the stored copies are identical in the test data
  EXPECT_TRUE(model_->mtp()[0].shares_head);
  const int64_t D = model_->config().hidden_size, V = model_->config().vocab_size;
  for (const Json& seq : ref_->json()["sequences"]) {
    const std::vector<int32_t> tokens = Tokens(seq);
    const int64_t L = static_cast<int64_t>(tokens.size());
    Context main(*model_, {L, L, AttentionImpl::kAuto});
    std::vector<float> hidden(L * D);
    main.Forward(tokens, {.hidden = hidden});
    std::vector<int32_t> next(tokens.begin() + 1, tokens.end());
    next.push_back(Argmax(main.last_logits(), V));
    ASSERT_EQ(next, seq["mtp"]["input_tokens"].get<std::vector<int32_t>>());
    MtpContext mtp(*model_, 0, {L, L, AttentionImpl::kAuto});
    std::vector<float> logits(L * V);
    std::map<std::string, std::vector<float>> got;
    ForwardTrace trace;
    trace.tensor = [&](const std::string& name, const float* data, int64_t rows, int64_t c,
                       int64_t stride) {
      for (int64_t r = 0; r < rows; ++r)
        got[name].insert(got[name].end(), data + r * stride, data + r * stride + c);
    };
    mtp.Forward(hidden.data(), D, next, {.logits = logits}, &trace);
    const std::vector<float> want = ref_->F32(seq["mtp"]["logits"]);
    EXPECT_LE(MaxAbsDiff(logits.data(), want.data(), L * V), kLogitTol) << seq["name"];
    EXPECT_EQ(Argmax(logits.data() + (L - 1) * V, V), seq["mtp"]["argmax"].back().get<int32_t>());
    for (const char* name : {"eh_proj_out", "block_out"}) {
      if (!seq["mtp"].contains(name)) continue;
      const std::vector<float> w = ref_->F32(seq["mtp"][name]);
      const std::vector<float>& g = got["mtp0." + std::string(name)];
      ASSERT_EQ(g.size(), w.size()) << name;
      EXPECT_LE(MaxAbsDiff(g.data(), w.data(), static_cast<int64_t>(w.size())), kLogitTol) << name;
    }
  }
}

TEST_P(GoldenTest, EverySimdTarget) {
  const std::vector<std::string> targets = kernels::AvailableTargets();
  ASSERT_FALSE(targets.empty());
  for (const std::string& t : targets) {
    ASSERT_TRUE(kernels::ForceTarget(t));
    ASSERT_EQ(kernels::ActiveTarget(), t);
    CheckPrefill(Sequence(33), 33, AttentionImpl::kAbsorbed);
    CheckPrefill(Sequence(33), 33, AttentionImpl::kExpanded);
    CheckDecode(Sequence(7));
  }
}

TEST_P(GoldenTest, SingleThreadMatches) {
  const int threads = NumThreads();
  SetNumThreads(1);
  CheckPrefill(Sequence(33), 33, AttentionImpl::kAbsorbed);
  CheckDecode(Sequence(7));
  SetNumThreads(threads);
}

TEST_P(GoldenTest, WeightSampleDequantizes) {
  const Json& ws = ref_->json()["weight_sample"];
  const std::vector<float> want = ref_->F32(ws["effective_f32"]);
  const MlaWeights& attn = model_->weights().layers[0].attn;
  const kernels::WeightMatrix& w = model_->config().q_lora_rank > 0 ? attn.q_a : attn.q;
  ASSERT_EQ(w.rows, Reference::Rows(ws["effective_f32"]));
  ASSERT_EQ(w.cols, Reference::Cols(ws["effective_f32"]));
  std::vector<float> row(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    kernels::DequantRow(w, r, row.data());
    for (int64_t c = 0; c < w.cols; ++c) ASSERT_EQ(row[c], want[r * w.cols + c]) << r << "," << c;
  }
}

TEST_P(GoldenTest, RopeMatchesReference) {
  const Json& rope = ref_->json()["rope"];
  const RopeTable& t = model_->rope();
  const std::vector<double> want = rope["inv_freq_after_yarn"].get<std::vector<double>>();
  ASSERT_EQ(t.inv_freq.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(t.inv_freq[i], want[i], 1e-6 * want[i]) << i;
  EXPECT_NEAR(t.softmax_scale, rope["softmax_scale"].get<double>(), 1e-6);
  EXPECT_FLOAT_EQ(t.cos_sin_scale, 1.0f);
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest, ::testing::Values("v3-tiny", "v2lite-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace dsv3
