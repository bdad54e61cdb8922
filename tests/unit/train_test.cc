// Pieces of the trainer: the three products of a linear layer in BF16 and FP8 against float32,
// the learning-rate schedule, and the checkpoint the trainer writes giving, in the inference
// engine, the logits of the trainer's own forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "io/safetensors.h"
#include "model/model.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/linear.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace dsv3::train {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

// The Fprop, Dgrad and Wgrad of one linear layer (T tokens, in -> out; sizes not multiples of
// 128, outliers in x) in each precision against float32. E4M3 keeps 3 mantissa bits (relative
// rounding error <= 2^-4 per element, ~2^-4 / sqrt(3) ~ 0.036 RMS for uniform rounding); BF16 8
// bits (<= 2^-9).
TEST(TrainLinear, BF16AndFP8ProductsStayNearFloat32) {
  const int64_t T = 200, in = 320, out = 272;
  std::vector<float> w = Random(out * in, 1, 0.05f), x = Random(T * in, 2, 1.0f);
  std::vector<float> dy = Random(T * out, 3, 0.01f);
  for (int64_t t = 0; t < T; t += 17) x[t * in + (t % in)] = 40;  // a few outliers per tile
  auto run = [&](Precision p, std::vector<float>& y, std::vector<float>& dx,
                 std::vector<float>& dw) {
    LinearContext ctx(p);
    std::vector<float> g(out * in, 0.0f);
    Lin l{w.data(), g.data(), out, in};
    if (p != Precision::kF32) {
      l.precision = p;
      l.ctx = &ctx;
      l.cache = ctx.NewCache();
    }
    double flops = 0;
    y.assign(T * out, 0);
    dx.assign(T * in, 0);
    LinFwd(l, x.data(), T, y.data(), flops);
    LinBwd(l, x.data(), dy.data(), T, dx.data(), 0, flops);
    dw = g;
  };
  std::vector<float> y32, dx32, dw32;
  run(Precision::kF32, y32, dx32, dw32);
  struct Case {
    Precision p;
    double tol;
  };
  for (const Case c : {Case{Precision::kBF16, 4e-3}, Case{Precision::kFP8, 6e-2}}) {
    SCOPED_TRACE(PrecisionName(c.p));
    std::vector<float> y, dx, dw;
    run(c.p, y, dx, dw);
    EXPECT_LT(RelL2(y, y32), c.tol);
    EXPECT_LT(RelL2(dx, dx32), c.tol);
    EXPECT_LT(RelL2(dw, dw32), c.tol);
    // Not float32 (the low-precision path really ran).
    EXPECT_GT(RelL2(y, y32), 1e-5);
  }
}

TEST(TrainSchedule, WarmupThenCosineOrWsdToTheFloor) {
  TrainOptions o;
  o.steps = 101;
  o.warmup = 10;
  o.lr = 1e-3;
  o.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(LearningRate(o, 0), 1e-4);
  EXPECT_DOUBLE_EQ(LearningRate(o, 9), 1e-3);
  EXPECT_DOUBLE_EQ(LearningRate(o, 10), 1e-3);
  EXPECT_NEAR(LearningRate(o, 55), 0.55e-3, 1e-12);  // halfway: the mean of peak and floor
  EXPECT_NEAR(LearningRate(o, 100), 1e-4, 1e-15);
  o.schedule = "wsd";
  EXPECT_DOUBLE_EQ(LearningRate(o, 50), 1e-3);
  EXPECT_DOUBLE_EQ(LearningRate(o, 82), 1e-3);
  EXPECT_NEAR(LearningRate(o, 100), 1e-4, 1e-15);
}

// Three AdamW steps on v3-tiny (q_lora, MTP, noaux_tc), a float32 checkpoint, and the inference
// engine's prefill logits of the first batch row against the trainer's.
TEST(TrainCheckpoint, InferenceLogitsEqualTheTrainersForward) {
  const std::string dir = test::TestData("models/v3-tiny");
  DSV3_REQUIRE_DATA(dir);
  const Config config = Config::Load(dir);
  Params p(config);
  p.Load(Checkpoint(dir));
  const int64_t B = 2, T = 16;
  std::vector<int32_t> tokens(B * (T + 1));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 37 + 5) % 1000);
  TrainModel model(p, B, T, Objective{});
  AdamW opt(p, AdamWOptions{});
  for (int step = 0; step < 3; ++step) {
    model.Forward(tokens.data());
    p.ZeroGrads();
    model.Backward();
    opt.Step(p, 1e-3);
    UpdateRoutingBiases(p, model.moe_stats(), 1e-3f);
  }
  model.set_keep_logits(true);
  model.Forward(tokens.data());
  test::TempDir tmp;
  SaveCheckpoint(p, tmp.path(), SaveOptions{.dtype = "f32"});
  const std::unique_ptr<Model> m = Model::Load(tmp.path());
  const int64_t V = config.vocab_size;
  Context ctx(*m, {T, T});
  std::vector<float> logits(T * V);
  ctx.Forward(std::span<const int32_t>(tokens.data(), T), {.logits = logits});
  double max_diff = 0;
  for (int64_t i = 0; i < T * V; ++i)
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(logits[i]) - model.logits()[i]));
  EXPECT_LT(max_diff, 1e-4);
}

}  // namespace
}  // namespace dsv3::train
