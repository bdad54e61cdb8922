// MTP speculative decoding in the serving scheduler (SchedulerOptions::draft): concurrent greedy
// requests (more than there are slots, one joining mid-way, prompt prefixes reused in place and
// copied from a busy slot, choices of one request, requests that fill their slot to the last
// position) give exactly the tokens of `dsv3 generate` with and without drafts and of the
// scheduler without drafts; sampled requests give exactly what `dsv3 generate --draft` gives
// with the same seed, so the same tokens on every run and in other batches; requests with a
// constraint, logprobs or penalties decode without drafts and still agree; the draft counters
// move.
//
// Two models: the tiny V3 test model (its random MTP module is almost never right, so greedy
// drafts are rejected: the rollback path), and a synthetic one whose MTP module is rewired to
// repeat the main model's last choice (eh_proj passes the hidden state through, the layer adds
// nothing, the head is lm_head), so that greedy drafts are accepted whenever the main model
// repeats a token, which small random models do in long runs: the acceptance path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "model/model.h"
#include "model/synth.h"
#include "runtime/scheduler.h"
#include "runtime/speculative.h"
#include "runtime/text_generate.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

using std::chrono::milliseconds;

// A small synthetic checkpoint in `dir` whose MTP module predicts the token the main model
// chose last: x = RmsNorm(h) (eh_proj = [0 | I], hnorm = 1), the decoder layer's output
// projections are zero (y = x), and the head is lm_head after a norm of ones, so the MTP logits
// are the main model's logits at the same position, rescaled.
void WriteRepeatingMtpModel(const std::string& dir) {
  const test::TempDir raw;
  SynthOptions so;
  so.preset = "tiny";
  so.set = {"vocab_size=16",  "bos_token_id=0",       "eos_token_id=1",
            "hidden_size=64", "intermediate_size=96", "moe_intermediate_size=32",
            "q_lora_rank=32", "kv_lora_rank=32"};
  so.seed = 11;
  so.out_dir = raw.path();
  so.progress = false;
  Synthesize(so);
  const Config c = Config::Load(raw.path());
  const std::string mtp = "model.layers." + std::to_string(c.num_hidden_layers) + ".";
  const SafetensorsFile in(raw / "model.safetensors");
  const TensorInfo* lm_head = nullptr;
  for (const TensorInfo& t : in.tensors()) {
    if (t.name == "lm_head.weight") lm_head = &t;
  }
  ASSERT_NE(lm_head, nullptr);
  auto ends = [](const std::string& name, const std::string& tail) {
    return name.size() >= tail.size() &&
           name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
  };
  std::vector<TensorToWrite> out;
  for (const TensorInfo& t : in.tensors()) {
    TensorToWrite w{t.name, t.dtype, t.shape, nullptr};
    const bool in_mtp = t.name.rfind(mtp, 0) == 0;
    const uint64_t bytes = t.nbytes;
    if (in_mtp && t.name == mtp + "eh_proj.weight") {  // [D, 2D] bf16: [0 | I]
      const int64_t D = c.hidden_size;
      w.fill = [D](uint8_t* dst) {
        auto* v = reinterpret_cast<uint16_t*>(dst);
        std::fill_n(v, D * 2 * D, uint16_t{0});
        for (int64_t r = 0; r < D; ++r) v[r * 2 * D + D + r] = 0x3F80;  // 1.0
      };
    } else if (in_mtp &&
               (ends(t.name, "hnorm.weight") || ends(t.name, "shared_head.norm.weight"))) {
      w.fill = [bytes](uint8_t* dst) {
        std::fill_n(reinterpret_cast<uint16_t*>(dst), bytes / 2, uint16_t{0x3F80});
      };
    } else if (in_mtp && (ends(t.name, "o_proj.weight") || ends(t.name, "down_proj.weight"))) {
      w.fill = [bytes](uint8_t* dst) { std::memset(dst, 0, bytes); };
    } else if (in_mtp && ends(t.name, "shared_head.head.weight")) {
      const uint8_t* src = lm_head->data;
      w.fill = [src, bytes](uint8_t* dst) { std::memcpy(dst, src, bytes); };
    } else {
      const uint8_t* src = t.data;
      w.fill = [src, bytes](uint8_t* dst) { std::memcpy(dst, src, bytes); };
    }
    out.push_back(std::move(w));
  }
  std::filesystem::copy_file(raw / "config.json", dir + "/config.json");
  WriteSafetensors(dir + "/model.safetensors", std::move(out), in.metadata());
}

class SchedulerSpeculativeTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string tok = test::TestData("tokenizer/deepseek_v3");
    DSV3_REQUIRE_DATA(tok + "/tokenizer.json");
    std::string dir;
    if (GetParam() == "repeating-mtp") {
      dir = repeating_.path();
      WriteRepeatingMtpModel(dir);
    } else {
      dir = test::TestData("models/" + GetParam());
      DSV3_REQUIRE_DATA(dir + "/config.json");
    }
    model_ = Model::Load(dir);
    tokenizer_ = Tokenizer::Load(tok);
    ASSERT_FALSE(model_->mtp().empty());
  }
  // Whether greedy drafts get accepted (see the top of the file).
  bool accepts() const { return GetParam() == "repeating-mtp"; }
  std::vector<int32_t> Prompt(int seq, int length) const {
    return test::SchedulerPrompt(seq, length, model_->config().vocab_size);
  }
  static ServeRequest Request(std::vector<int32_t> prompt, int64_t n) {
    return test::SchedulerRequest(std::move(prompt), n);
  }
  static SchedulerOptions Options(int64_t parallel, int64_t ctx_size, int64_t draft) {
    SchedulerOptions o;
    o.parallel = parallel;
    o.ctx_size = ctx_size;
    o.draft = draft;
    return o;
  }
  // What `dsv3 generate` computes: one context, the prompt in chunks of min(prompt, 512), with
  // `draft` MTP drafts per step (0: plain decoding); *accepted (if given) is increased by the
  // drafts it accepted.
  std::vector<int32_t> Alone(const ServeRequest& r, int64_t draft,
                             int64_t* accepted = nullptr) const {
    ContextOptions o;
    o.capacity = static_cast<int64_t>(r.prompt.size()) + r.options.generate.max_new_tokens + draft;
    o.max_batch = std::min<int64_t>(static_cast<int64_t>(r.prompt.size()), 512);
    Context ctx(*model_, o);
    std::unique_ptr<SpeculativeDecoder> spec;
    if (draft > 0) spec = std::make_unique<SpeculativeDecoder>(*model_, o, draft);
    TextGenerateResult result = GenerateText(ctx, *tokenizer_, r.prompt, r.options, {}, spec.get());
    for (int64_t a : result.stats.drafts_accepted) {
      if (accepted) *accepted += a;
    }
    return result.tokens;
  }
  static std::string WaitDone(Job& job) {
    std::string text;
    while (!job.Wait(&text, milliseconds(50))) {
    }
    return text;
  }
  // The requests submitted at once to a fresh scheduler; their tokens.
  std::vector<std::vector<int32_t>> Serve(const SchedulerOptions& o,
                                          const std::vector<ServeRequest>& requests,
                                          SchedulerStats* stats = nullptr) const {
    Scheduler sched(*model_, *tokenizer_, o);
    std::vector<std::shared_ptr<Job>> jobs;
    for (const ServeRequest& r : requests) {
      jobs.push_back(sched.Submit(r));
      EXPECT_NE(jobs.back(), nullptr);
    }
    std::vector<std::vector<int32_t>> out;
    for (const auto& job : jobs) {
      WaitDone(*job);
      out.push_back(job->tokens());
    }
    if (stats) *stats = sched.Stats();
    return out;
  }
  void CheckPrefixReuse(bool sampled);
  test::TempDir repeating_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
};
INSTANTIATE_TEST_SUITE_P(Models, SchedulerSpeculativeTest,
                         ::testing::Values("v3-tiny", "repeating-mtp"), [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// More requests than slots, so that some join while others decode; each answers what it
// answers alone, with drafts 1 to 3.
TEST_P(SchedulerSpeculativeTest, GreedyRequestsGiveWhatGenerateAndPlainServingGive) {
  const int lengths[] = {3, 9, 1, 17, 40, 2, 8};
  std::vector<ServeRequest> requests;
  for (int i = 0; i < 7; ++i) requests.push_back(Request(Prompt(i, lengths[i]), 10 + 3 * i));
  std::vector<std::vector<int32_t>> want;
  for (const ServeRequest& r : requests) want.push_back(Alone(r, 0));
  SchedulerStats plain;
  EXPECT_EQ(Serve(Options(3, 128, 0), requests, &plain), want) << "without drafts";
  EXPECT_EQ(plain.draft, 0);
  EXPECT_EQ(plain.drafts_proposed, 0);
  int64_t total = 0;
  for (const auto& w : want) total += static_cast<int64_t>(w.size());
  for (int64_t draft : {1, 2, 3}) {
    SchedulerStats s;
    const std::vector<std::vector<int32_t>> got = Serve(Options(3, 128, draft), requests, &s);
    int64_t accepted = 0;  // by generate: the same drafts when the MTP state is right
    for (size_t i = 0; i < requests.size(); ++i) {
      EXPECT_EQ(got[i], want[i]) << "request " << i << ", draft " << draft;
      EXPECT_EQ(got[i], Alone(requests[i], draft, &accepted))
          << "request " << i << ", draft " << draft;
    }
    EXPECT_EQ(s.drafts_accepted, accepted) << "draft " << draft;
    EXPECT_EQ(s.draft, draft);
    EXPECT_EQ(s.tokens_generated, total);
    // The first token of each request comes from its prompt pass, the others from decode steps.
    EXPECT_EQ(s.decode_tokens, total - 7);
    EXPECT_GT(s.drafts_proposed, 0) << "draft " << draft;
    if (accepts()) {
      EXPECT_GT(s.drafts_accepted, 0) << "draft " << draft;
    }
    EXPECT_LE(s.drafts_accepted, s.drafts_proposed);
    // Every decode step of a request gives its accepted drafts plus one token; a step batches
    // the requests of several slots.
    EXPECT_LT(s.decode_steps, s.decode_tokens - s.drafts_accepted) << "draft " << draft;
    if (accepts()) {
      EXPECT_LT(s.decode_steps, plain.decode_steps) << "draft " << draft;
    }
    EXPECT_EQ(s.slots_in_use, 0);
  }
}

// A request submitted while another decodes with drafts joins its batches.
TEST_P(SchedulerSpeculativeTest, ARequestJoiningMidWayAgrees) {
  Scheduler sched(*model_, *tokenizer_, Options(2, 256, 2));
  const ServeRequest first = Request(Prompt(1, 12), 240), second = Request(Prompt(2, 30), 20);
  std::shared_ptr<Job> a = sched.Submit(first);
  while (sched.Stats().tokens_generated < 5) {  // a is decoding
    std::this_thread::sleep_for(milliseconds(1));
  }
  std::shared_ptr<Job> b = sched.Submit(second);
  std::string text;
  WaitDone(*b);
  EXPECT_FALSE(a->Wait(&text, milliseconds(0))) << "a ended before b joined: no overlap";
  WaitDone(*a);
  EXPECT_EQ(a->tokens(), Alone(first, 0));
  EXPECT_EQ(b->tokens(), Alone(second, 0));
}

// Prefix reuse keeps the slot's MTP state consistent: the next turn of a conversation (in place),
// a shared beginning only (cut back), a prefix copied from a busy slot.
// Greedy (as plain decoding and generate --draft), or sampled with a seed (as generate --draft:
// the drafts' distributions, and so the tokens, depend on every MTP slot being right).
void SchedulerSpeculativeTest::CheckPrefixReuse(bool sampled) {
  Scheduler sched(*model_, *tokenizer_, Options(2, 512, 2));
  int64_t accepted = 0;  // by generate, for each request alone
  auto Request = [&](std::vector<int32_t> prompt, int64_t n) {
    ServeRequest r = SchedulerSpeculativeTest::Request(std::move(prompt), n);
    if (sampled) r.options.generate.sampling = {0.9f, 1.0f, 0, static_cast<uint64_t>(n)};
    return r;
  };
  auto run = [&](const ServeRequest& r, int64_t want_reused) {
    std::shared_ptr<Job> job = sched.Submit(r);
    WaitDone(*job);
    EXPECT_EQ(job->reused_tokens(), want_reused);
    return job;
  };
  auto agrees = [&](const Job& job, const ServeRequest& r) {
    if (!sampled) {
      EXPECT_EQ(job.tokens(), Alone(r, 0));
    }
    EXPECT_EQ(job.tokens(), Alone(r, 2, &accepted));
  };
  auto check = [&](const ServeRequest& r, int64_t want_reused) {
    const std::shared_ptr<Job> job = run(r, want_reused);
    agrees(*job, r);
    return job->tokens();
  };
  const std::vector<int32_t> base = Prompt(5, 30);
  const std::vector<int32_t> first = check(Request(base, 16), 0);
  std::vector<int32_t> turn = base;
  turn.insert(turn.end(), first.begin(), first.end());
  turn.push_back(9);
  check(Request(turn, 16), static_cast<int64_t>(base.size() + first.size() - 1));
  // Cut back to the middle of the first answer (decoded with drafts).
  std::vector<int32_t> branch(turn.begin(), turn.begin() + 37);
  branch.insert(branch.end(), {4, 5, 6});
  check(Request(branch, 12), 37);
  // Copied from a busy slot: a prefix that goes on differently, then the whole prompt.
  const ServeRequest busy_request = Request(Prompt(9, 20), 400);
  const std::vector<int32_t>& other = busy_request.prompt;
  const int64_t before = sched.Stats().tokens_generated;
  std::shared_ptr<Job> busy = sched.Submit(busy_request);
  while (sched.Stats().tokens_generated < before + 5) {  // busy is decoding
    std::this_thread::sleep_for(milliseconds(1));
  }
  std::vector<int32_t> diverges(other.begin(), other.begin() + 15);
  diverges.push_back(3);
  const ServeRequest r1 = Request(diverges, 6), r2 = Request(other, 10);
  const std::shared_ptr<Job> copied1 = run(r1, 15), copied2 = run(r2, 19);
  std::string text;
  EXPECT_FALSE(busy->Wait(&text, milliseconds(0))) << "busy ended before the copies";
  WaitDone(*busy);
  agrees(*busy, busy_request);
  agrees(*copied1, r1);
  agrees(*copied2, r2);
  // The busy slot's prompt and some of its answer, in place.
  std::vector<int32_t> longer = other;
  longer.insert(longer.end(), busy->tokens().begin(), busy->tokens().begin() + 25);
  longer.push_back(7);
  check(Request(longer, 10), 20 + 25);
  const SchedulerStats s = sched.Stats();
  EXPECT_EQ(s.prompt_tokens_reused, 45 + 37 + 15 + 19 + 45);
  // The same drafts as generate's: every slot's MTP state followed its cache.
  EXPECT_EQ(s.drafts_accepted, accepted);
  if (accepts() || sampled) {
    EXPECT_GT(s.drafts_accepted, 0);
  }
}
TEST_P(SchedulerSpeculativeTest, PrefixReuseAgrees) { CheckPrefixReuse(false); }
TEST_P(SchedulerSpeculativeTest, SampledPrefixReuseAgrees) { CheckPrefixReuse(true); }

// Choices of one request copy the first one's cache and MTP state; greedy choices are all the
// same answer, sampled ones each what generate --draft gives with its seed.
TEST_P(SchedulerSpeculativeTest, SiblingsAgree) {
  SchedulerOptions o = Options(4, 256, 2);
  o.prefill_chunk = 8;  // several prompt passes, and MTP slots run after each
  const std::vector<int32_t> prompt = Prompt(5, 30);
  std::vector<ServeRequest> requests;
  for (int i = 0; i < 3; ++i) {
    ServeRequest r = Request(prompt, 20);
    r.siblings = 7;
    requests.push_back(r);
  }
  for (int i = 0; i < 3; ++i) {
    ServeRequest r = Request(prompt, 20);
    r.options.generate.sampling = {0.9f, 0.95f, 0, static_cast<uint64_t>(40 + i)};
    r.siblings = 8;
    requests.push_back(r);
  }
  SchedulerStats s;
  const std::vector<std::vector<int32_t>> got = Serve(o, requests, &s);
  EXPECT_EQ(s.prompt_tokens_reused, 4 * 29);
  std::set<std::vector<int32_t>> distinct;
  int64_t accepted = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(got[i], Alone(requests[i], 2, &accepted)) << "choice " << i;
    if (i < 3) {
      EXPECT_EQ(got[i], Alone(requests[i], 0)) << "choice " << i;  // greedy: the plain answer
    } else {
      distinct.insert(got[i]);
    }
  }
  EXPECT_EQ(s.drafts_accepted, accepted);
  EXPECT_GT(distinct.size(), 1u) << "different seeds, the same answers";
}

// The verification pass never runs past the slot: near the end of its context a request drafts
// fewer tokens. Each request here fills its slot exactly (prompt + n - 1 = ctx_size).
TEST_P(SchedulerSpeculativeTest, RequestsFillingTheirSlotAgree) {
  const int64_t ctx = 40;
  std::vector<ServeRequest> requests;
  for (int i = 0; i < 3; ++i)
    requests.push_back(Request(Prompt(20 + i, 5 + 7 * i), ctx + 1 - (5 + 7 * i)));
  for (int64_t draft : {int64_t{1}, int64_t{3}, kMaxDraft}) {
    const std::vector<std::vector<int32_t>> got = Serve(Options(3, ctx, draft), requests);
    for (size_t i = 0; i < requests.size(); ++i) {
      EXPECT_EQ(got[i], Alone(requests[i], 0)) << "request " << i << ", draft " << draft;
    }
  }
}

// Sampled requests decoding together: the same tokens as generate --draft with the same seed,
// so the same on every run.
TEST_P(SchedulerSpeculativeTest, SampledRequestsAreReproducible) {
  std::vector<ServeRequest> requests;
  for (int i = 0; i < 5; ++i) {
    requests.push_back(Request(Prompt(30 + i, 6 + 5 * i), 24));
    requests.back().options.generate.sampling = {0.8f + 0.1f * static_cast<float>(i % 3), 0.9f,
                                                 i % 2 == 0 ? 0 : 40, static_cast<uint64_t>(i)};
  }
  SchedulerStats s;
  const std::vector<std::vector<int32_t>> first = Serve(Options(3, 128, 2), requests, &s);
  EXPECT_GT(s.drafts_accepted, 0);
  EXPECT_LT(s.drafts_accepted, s.drafts_proposed);  // some rejected: the residual draws run
  EXPECT_EQ(Serve(Options(3, 128, 2), requests), first);
  EXPECT_EQ(Serve(Options(2, 128, 2), requests), first) << "other batches";
  int64_t accepted = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(first[i], Alone(requests[i], 2, &accepted)) << "request " << i;
  }
  EXPECT_EQ(s.drafts_accepted, accepted);
}

// Bans the tokens whose id is odd: a constraint the scheduler applies through the sampler.
class EvenTokens : public LogitMask {
 public:
  explicit EvenTokens(int64_t vocab) : vocab_(vocab) {}
  void Apply(float* logits) override {
    for (int64_t v = 1; v < vocab_; v += 2) logits[v] = -INFINITY;
  }
  void Accept(int32_t) override {}

 private:
  int64_t vocab_;
};

// A constraint, logprobs or penalties: the request decodes without drafts (in the same batches
// as drafting ones) and answers as without drafts.
TEST_P(SchedulerSpeculativeTest, RequestsThatCannotDraftDecodePlainly) {
  std::vector<ServeRequest> requests;
  requests.push_back(Request(Prompt(40, 10), 20));
  const int64_t V = model_->config().vocab_size;
  requests.back().constraint = [V](int64_t) { return std::make_unique<EvenTokens>(V); };
  requests.push_back(Request(Prompt(41, 7), 20));
  requests.back().options.generate.sampling.logprobs = 2;
  requests.push_back(Request(Prompt(42, 9), 20));
  requests.back().options.generate.sampling.frequency_penalty = 0.5f;
  SchedulerStats s;
  const std::vector<std::vector<int32_t>> plain = Serve(Options(4, 128, 0), requests);
  EXPECT_EQ(Serve(Options(4, 128, 2), requests, &s), plain);
  EXPECT_EQ(s.drafts_proposed, 0);
  for (int32_t t : plain[0]) EXPECT_EQ(t % 2, 0);
  requests.push_back(Request(Prompt(43, 9), 30));  // drafts, in the same batches
  const std::vector<std::vector<int32_t>> mixed = Serve(Options(4, 128, 2), requests, &s);
  EXPECT_GT(s.drafts_proposed, 0);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(mixed[i], plain[i]) << "request " << i;
  EXPECT_EQ(mixed[3], Alone(requests[3], 0));
}

TEST_P(SchedulerSpeculativeTest, BadDraftCountsAreErrors) {
  EXPECT_THROW(Scheduler(*model_, *tokenizer_, Options(1, 64, kMaxDraft + 1)), Error);
  EXPECT_THROW(Scheduler(*model_, *tokenizer_, Options(1, 64, -1)), Error);
}

}  // namespace
}  // namespace dsv3
