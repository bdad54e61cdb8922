// The decode loop and the training step allocate nothing: global operator new is counted while a
// synthetic model decodes token after token, and while the trainer runs steps after its first.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "model/model.h"
#include "model/synth.h"
#include "runtime/sampler.h"
#include "tests/test_util.h"
#include "train/optimizer.h"
#include "train/train_model.h"

namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

// The replaced global operators pair malloc with free, which GCC cannot see through.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
// The nothrow forms too (std::stable_sort's buffer uses them): every form the program calls must
// come from the same family, or AddressSanitizer reports a new/free mismatch.
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void* operator new[](size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace dsv3 {
namespace {

TEST(DecodeLoop, AllocatesNothing) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "tiny";
  o.dtype = "fp8";
  o.out_dir = dir.path();
  o.progress = false;
  Synthesize(o);
  const std::unique_ptr<Model> model = Model::Load(dir.path());
  Context ctx(*model, {64, 16, AttentionImpl::kAbsorbed});
  Sampler sampler({0.7f, 0.9f, 50, 1}, model->config().vocab_size);
  const std::vector<int32_t> prompt = {1, 2, 3, 4};
  ctx.Forward(prompt);
  int32_t token = sampler.Sample(ctx.last_logits());
  ctx.Forward(std::span<const int32_t>(&token, 1));  // warm-up step (thread team start-up)
  token = sampler.Sample(ctx.last_logits());

  const int64_t before = g_allocations.load();
  ASSERT_GT(before, 0);  // the counter sees allocations
  for (int step = 0; step < 16; ++step) {
    ctx.Forward(std::span<const int32_t>(&token, 1));
    token = sampler.Sample(ctx.last_logits());
  }
  EXPECT_EQ(g_allocations.load() - before, 0);
  EXPECT_EQ(ctx.n_past(), 4 + 1 + 16);
}

// Forward, backward, AdamW and the bias update of every precision on the v3-tiny config (q_lora,
// MoE with groups, MTP): the first step sizes the scratch, the next ones allocate nothing.
TEST(TrainStep, AllocatesNothingAfterTheFirst) {
  const std::string dir = test::TestData("models/v3-tiny");
  DSV3_REQUIRE_DATA(dir);
  const Config config = Config::Load(dir);
  for (const train::Precision precision :
       {train::Precision::kF32, train::Precision::kBF16, train::Precision::kFP8}) {
    SCOPED_TRACE(train::PrecisionName(precision));
    train::Params p(config);
    p.Init(0.02, 1);
    train::TrainModel model(p, 2, 24, train::Objective{}, precision);
    train::AdamW opt(p, train::AdamWOptions{});
    std::vector<int32_t> tokens(2 * 25);
    auto step = [&](int k) {
      for (size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = static_cast<int32_t>((i * 31 + k * 7) % config.vocab_size);
      model.Forward(tokens.data());
      p.ZeroGrads();
      model.Backward();
      opt.Step(p, 1e-3);
      train::UpdateRoutingBiases(p, model.moe_stats(), 1e-3f);
    };
    step(0);
    const int64_t before = g_allocations.load();
    for (int k = 1; k <= 3; ++k) step(k);
    EXPECT_EQ(g_allocations.load() - before, 0);
  }
}

}  // namespace
}  // namespace dsv3
