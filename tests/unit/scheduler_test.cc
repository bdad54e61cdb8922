// The serving scheduler (src/runtime/scheduler.h) on the tiny V3 test model: requests decoded
// together (more than there are slots, so some wait) give exactly the tokens each gives alone
// through GenerateText; a prompt sharing a prefix with a cached slot reuses it (in place or
// copied from a busy slot) and still answers like a fresh computation; cancelling frees the
// slot; a full queue refuses; shutdown cancels what runs.
#include "runtime/scheduler.h"

#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

using std::chrono::milliseconds;

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = test::TestData("models/v3-tiny");
    const std::string tok = test::TestData("tokenizer/deepseek_v3");
    DSV3_REQUIRE_DATA(dir + "/config.json");
    DSV3_REQUIRE_DATA(tok + "/tokenizer.json");
    model_ = Model::Load(dir);
    tokenizer_ = Tokenizer::Load(tok);
  }
  std::vector<int32_t> Prompt(int seq, int length) const {
    return test::SchedulerPrompt(seq, length, model_->config().vocab_size);
  }
  static ServeRequest Request(std::vector<int32_t> prompt, int64_t n) {
    return test::SchedulerRequest(std::move(prompt), n);
  }
  // What `dsv3 generate` computes: one context, the prompt in chunks of min(prompt, 512).
  std::vector<int32_t> Alone(const ServeRequest& r) const {
    ContextOptions o;
    o.capacity = 256;
    o.max_batch = std::min<int64_t>(static_cast<int64_t>(r.prompt.size()), 512);
    o.kv_cache = kv_;
    Context ctx(*model_, o);
    return GenerateText(ctx, *tokenizer_, r.prompt, r.options, {}).tokens;
  }
  static std::string WaitDone(Job& job) {
    std::string text;
    while (!job.Wait(&text, milliseconds(50))) {
    }
    return text;
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  KvCacheType kv_ = KvCacheType::kF32;  // of the slots and of the references
};

// The batching and prefix-reuse guarantees with either cache type.
class SchedulerKvTest : public SchedulerTest, public ::testing::WithParamInterface<KvCacheType> {
 protected:
  void SetUp() override {
    SchedulerTest::SetUp();
    kv_ = GetParam();
  }
};
INSTANTIATE_TEST_SUITE_P(KvCache, SchedulerKvTest,
                         ::testing::Values(KvCacheType::kF32, KvCacheType::kBF16),
                         [](const auto& info) { return std::string(KvCacheTypeName(info.param)); });

TEST_P(SchedulerKvTest, BatchedRequestsGiveWhatEachGivesAlone) {
  SchedulerOptions o;
  o.parallel = 4;
  o.ctx_size = 256;
  o.kv_cache = kv_;
  Scheduler sched(*model_, *tokenizer_, o);
  const int lengths[] = {3, 9, 1, 17, 40, 2, 8, 11};
  std::vector<ServeRequest> requests;
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 8; ++i) {
    requests.push_back(Request(Prompt(i, lengths[i]), 6 + i));
    if (i == 3) requests.back().options.generate.sampling = {0.8f, 0.9f, 20, 7};
    jobs.push_back(sched.Submit(requests.back()));
    ASSERT_NE(jobs.back(), nullptr);
  }
  std::vector<std::string> texts;
  for (int i = 0; i < 8; ++i) texts.push_back(WaitDone(*jobs[i]));
  // The references only now: the engine thread must be the only one running the model (the
  // thread pool serves one caller at a time).
  for (int i = 0; i < 8; ++i) {
    const std::string& text = texts[i];
    EXPECT_EQ(jobs[i]->tokens(), Alone(requests[i])) << "request " << i;
    EXPECT_EQ(jobs[i]->finish_reason(), FinishReason::kLength);
    EXPECT_EQ(jobs[i]->completion_tokens(), 6 + i);
    EXPECT_EQ(jobs[i]->prompt_tokens(), lengths[i]);
    EXPECT_EQ(text, tokenizer_->Decode(jobs[i]->tokens(), true));
  }
  const SchedulerStats s = sched.Stats();
  EXPECT_EQ(s.requests_finished, 8);
  EXPECT_EQ(s.slots_in_use, 0);
  EXPECT_EQ(s.tokens_generated, 6 * 8 + 28);
  EXPECT_GT(s.decode_tokens, s.decode_steps);  // some steps decoded several requests
}

TEST_P(SchedulerKvTest, PrefixReuseAnswersLikeAFreshComputation) {
  SchedulerOptions o;
  o.parallel = 2;
  o.ctx_size = 512;
  o.kv_cache = kv_;
  Scheduler sched(*model_, *tokenizer_, o);
  const std::vector<int32_t> base = Prompt(5, 30);
  // (References are computed while no request runs: one thread at a time runs the model.)
  auto run = [&](const ServeRequest& r, int64_t want_reused) {
    std::shared_ptr<Job> job = sched.Submit(r);
    WaitDone(*job);
    EXPECT_EQ(job->reused_tokens(), want_reused);
    return job;
  };
  auto check = [&](const ServeRequest& r, int64_t want_reused) {
    const std::shared_ptr<Job> job = run(r, want_reused);
    EXPECT_EQ(job->tokens(), Alone(r));
    return job->tokens();
  };
  const std::vector<int32_t> first = check(Request(base, 8), 0);
  // The next turn: the previous prompt and answer (all but its last token are cached) and more.
  std::vector<int32_t> turn = base;
  turn.insert(turn.end(), first.begin(), first.end());
  turn.push_back(9);
  check(Request(turn, 8), static_cast<int64_t>(base.size() + first.size() - 1));
  // A shared beginning only: the slot is cut back to it.
  std::vector<int32_t> branch(base.begin(), base.begin() + 12);
  branch.insert(branch.end(), {4, 5, 6});
  check(Request(branch, 5), 12);
  // A prefix held by a busy slot is copied into a free one.
  const std::vector<int32_t> other = Prompt(9, 20);
  std::shared_ptr<Job> busy = sched.Submit(Request(other, 200));
  std::string text;
  while (text.empty() && !busy->Wait(&text, milliseconds(50))) {  // its prompt is cached
  }
  std::vector<int32_t> shares = other;
  shares.resize(15);
  shares.push_back(3);
  const std::shared_ptr<Job> copied = run(Request(shares, 6), 15);
  WaitDone(*busy);
  EXPECT_EQ(busy->tokens(), Alone(Request(other, 200)));
  EXPECT_EQ(copied->tokens(), Alone(Request(shares, 6)));
  EXPECT_EQ(sched.Stats().prompt_tokens_reused, 30 + 7 + 12 + 15);
}

// The choices of one request (OpenAI's n): the first prefills the prompt, the others wait for it
// and copy its cache (all of the prompt but the last token), and each answers what it answers
// alone with its own seed.
TEST_P(SchedulerKvTest, SiblingsShareThePromptPrefill) {
  SchedulerOptions o;
  o.parallel = 4;
  o.ctx_size = 256;
  o.kv_cache = kv_;
  o.prefill_chunk = 8;  // the prompt takes several passes: the siblings must wait for all
  Scheduler sched(*model_, *tokenizer_, o);
  const std::vector<int32_t> prompt = Prompt(5, 30);
  std::vector<ServeRequest> requests;
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 3; ++i) {
    ServeRequest r = Request(prompt, 10);
    r.options.generate.sampling.temperature = 0.9f;
    r.options.generate.sampling.seed = 40 + i;
    r.siblings = 7;
    requests.push_back(r);
    jobs.push_back(sched.Submit(r));
  }
  std::shared_ptr<Job> other = sched.Submit(Request(Prompt(6, 12), 4));  // not a sibling
  for (auto& j : jobs) WaitDone(*j);
  WaitDone(*other);
  EXPECT_EQ(jobs[0]->reused_tokens(), 0);
  for (int i = 1; i < 3; ++i) EXPECT_EQ(jobs[i]->reused_tokens(), 29) << "choice " << i;
  EXPECT_EQ(other->reused_tokens(), 0);
  std::set<std::vector<int32_t>> distinct;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(jobs[i]->tokens(), Alone(requests[i])) << "choice " << i;
    distinct.insert(jobs[i]->tokens());
  }
  EXPECT_GT(distinct.size(), 1u) << "different seeds, the same answers";
  EXPECT_EQ(other->tokens(), Alone(Request(Prompt(6, 12), 4)));
}

TEST_F(SchedulerTest, CancelFreesTheSlotAndAFullQueueRefuses) {
  SchedulerOptions o;
  o.parallel = 1;
  o.ctx_size = 1024;
  o.queue = 1;
  Scheduler sched(*model_, *tokenizer_, o);
  std::shared_ptr<Job> a = sched.Submit(Request(Prompt(1, 5), 1000));
  std::shared_ptr<Job> b = sched.Submit(Request(Prompt(2, 5), 4));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  // One slot busy, one request waiting: the next is refused.
  EXPECT_EQ(sched.Submit(Request(Prompt(3, 5), 4)), nullptr);
  std::string text;
  while (text.empty() && !a->Wait(&text, milliseconds(50))) {
  }
  a->Cancel();
  WaitDone(*a);
  EXPECT_EQ(a->finish_reason(), FinishReason::kCancelled);
  EXPECT_LT(a->completion_tokens(), 1000);
  WaitDone(*b);
  EXPECT_EQ(b->finish_reason(), FinishReason::kLength);
  const SchedulerStats s = sched.Stats();
  EXPECT_EQ(s.requests_cancelled, 1);
  EXPECT_EQ(s.requests_rejected, 1);
  EXPECT_EQ(s.slots_in_use, 0);
  EXPECT_EQ(s.queue_length, 0);
}

TEST_F(SchedulerTest, ShutdownCancelsRunningAndQueuedRequests) {
  SchedulerOptions o;
  o.parallel = 1;
  o.ctx_size = 1024;
  Scheduler sched(*model_, *tokenizer_, o);
  std::shared_ptr<Job> a = sched.Submit(Request(Prompt(1, 5), 1000));
  std::shared_ptr<Job> b = sched.Submit(Request(Prompt(2, 5), 1000));
  sched.Shutdown();
  WaitDone(*a);
  WaitDone(*b);
  EXPECT_EQ(a->finish_reason(), FinishReason::kCancelled);
  EXPECT_EQ(b->finish_reason(), FinishReason::kCancelled);
  EXPECT_EQ(sched.Submit(Request(Prompt(3, 5), 4)), nullptr);
}

TEST_F(SchedulerTest, RequestsThatCannotFitAreErrors) {
  SchedulerOptions o;
  o.parallel = 1;
  o.ctx_size = 16;
  Scheduler sched(*model_, *tokenizer_, o);
  EXPECT_THROW(sched.Submit(Request({}, 4)), Error);
  EXPECT_THROW(sched.Submit(Request(Prompt(1, 10), 8)), Error);  // 10 + 8 - 1 > 16
  EXPECT_THROW(sched.Submit(Request(Prompt(1, 10), 0)), Error);
  EXPECT_THROW(sched.Submit(Request({-1}, 2)), Error);
  std::shared_ptr<Job> fits = sched.Submit(Request(Prompt(1, 10), 7));  // exactly fills it
  WaitDone(*fits);
  EXPECT_EQ(fits->completion_tokens(), 7);
}

}  // namespace
}  // namespace dsv3
