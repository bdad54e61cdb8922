// Continuous batching for serving: one engine thread owns a multi-slot Context; requests wait in
// a bounded queue, take a free slot (reusing the longest cached prefix of their prompt), have
// their prompt prefilled in chunks, and then decode together, one token per request per step in
// one pass over the weights (Context::ForwardBatch, exact: each request gets bit for bit what it
// would get decoding alone). Requests join and leave between steps. The engine thread must be
// the only one running a model in the process while the scheduler lives (the thread pool serves
// one caller at a time).
//
// With SchedulerOptions::draft > 0 the requests decode speculatively with the model's MTP module
// (as SpeculativeDecoder does for one sequence): each step, every decoding request that can
// draft proposes up to `draft` tokens (the MTP module of all such requests runs in batched
// passes, chained on its own output after the first draft), and ONE batched main-model pass
// verifies every request's last token plus its drafts; each request keeps its accepted drafts
// and the token that follows them, and the rejected positions are dropped by truncating its
// slot. Greedy requests get exactly the tokens of plain decoding; sampled ones follow
// speculative sampling (Sampler::Draft / Verify): a seed gives the tokens `dsv3 generate
// --draft N` gives with it, whatever else runs in the batches (the draft passes take the
// per-token products too). Requests with a constraint, logprobs, logit bias or penalties decode
// without drafts in the same passes (speculative sampling does not apply those adjustments).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/aligned.h"
#include "model/model.h"
#include "model/mtp.h"
#include "runtime/sampler.h"
#include "runtime/text_generate.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {

struct SchedulerOptions {
  int64_t parallel = 4;         // slots: requests decoded together
  int64_t ctx_size = 4096;      // cache positions per slot
  int64_t queue = 64;           // requests that may wait for a slot; Submit refuses beyond
  int64_t prefill_chunk = 512;  // prompt tokens per forward pass (as generate -p)
  // MTP draft tokens per request and step, 0..kMaxDraft; 0: plain decoding. Needs a checkpoint
  // with an MTP module and no process group.
  int64_t draft = 0;
  KvCacheType kv_cache = KvCacheType::kF32;
  kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32;
};

enum class FinishReason { kNone, kStop, kLength, kCancelled };

struct ServeRequest {
  std::vector<int32_t> prompt;  // not empty
  TextGenerateOptions options;  // max_new_tokens >= 1, sampling, stop strings, stop_at_eos
  // Requests with the same non-zero value are choices of one request (OpenAI's n): while one
  // of them prefills their prompt the others wait, then start from a copy of its cache and
  // decode in the same batches.
  uint64_t siblings = 0;
  // The answer's constraint (response_format, tool calls): makes the LogitMask that the
  // request's sampler applies, given the answer's token budget (max_new_tokens). Called on the
  // engine thread when the request takes a slot, once per choice. Empty: unconstrained.
  std::function<std::unique_ptr<LogitMask>(int64_t max_tokens)> constraint;
};

// One request's progress, written by the engine thread and read by the caller's thread.
class Job {
 public:
  // Waits up to `timeout` for news; appends the text generated since the last call to *text
  // (and, when the request asked for them, the tokens' log-probabilities since the last call to
  // *logprobs: one entry per generated token, those of a matched stop string included).
  // Returns true once the request has finished and all its text has been taken.
  bool Wait(std::string* text, std::chrono::milliseconds timeout,
            std::vector<TokenLogprobs>* logprobs = nullptr);
  // Asks the engine to drop the request; its slot is freed before the next step.
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  // Valid once Wait returned true.
  FinishReason finish_reason() const { return finish_; }
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const { return completion_tokens_; }
  int64_t reused_tokens() const { return reused_tokens_; }  // prompt tokens taken from a cache
  const std::vector<int32_t>& tokens() const { return tokens_; }  // generated ids

 private:
  friend class Scheduler;
  void Append(const std::string& text, const TokenLogprobs* logprobs = nullptr);
  void Finish(FinishReason reason, std::vector<int32_t> tokens);

  ServeRequest request_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;                     // generated, not yet taken
  std::vector<TokenLogprobs> logprobs_;  // the same for log-probabilities
  bool done_ = false;
  FinishReason finish_ = FinishReason::kNone;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0, reused_tokens_ = 0;
  std::vector<int32_t> tokens_;
};

// Counters and gauges for /metrics.
struct SchedulerStats {
  int64_t slots = 0, slots_in_use = 0, queue_length = 0, capacity_per_slot = 0;
  int64_t kv_tokens_in_use = 0;  // cached positions of the slots serving a request
  int64_t kv_tokens_cached = 0;  // cached positions of all slots (kept for prefix reuse)
  int64_t requests_finished = 0, requests_cancelled = 0, requests_rejected = 0;
  int64_t prompt_tokens = 0, prompt_tokens_reused = 0, tokens_generated = 0;
  int64_t decode_steps = 0, decode_tokens = 0;  // batched decode passes, tokens they produced
  // Speculative decoding (draft > 0): drafts per request and step; draft tokens fed to the
  // verification passes, and those the main model accepted.
  int64_t draft = 0, drafts_proposed = 0, drafts_accepted = 0;
  double decode_seconds = 0, prefill_seconds = 0;
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? decode_tokens / decode_seconds : 0;
  }
  double draft_acceptance() const {
    return drafts_proposed > 0 ? static_cast<double>(drafts_accepted) / drafts_proposed : 0;
  }
};

class Scheduler {
 public:
  Scheduler(const Model& model, const Tokenizer& tokenizer, const SchedulerOptions& options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; null when the queue is full or the scheduler is shut down. A request that
  // cannot fit a slot (prompt + max_new_tokens - 1 > ctx_size) is a dsv3::Error. (Drafts need
  // no room beyond that: a request drafts at most the tokens it still has to generate, less
  // one.)
  std::shared_ptr<Job> Submit(ServeRequest request);
  // Cancels every queued and running request and stops the engine thread.
  void Shutdown();
  SchedulerStats Stats() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Active;
  struct Slot {
    std::vector<int32_t> history;  // the tokens in this slot's cache, in order
    std::unique_ptr<Active> active;
    uint64_t last_used = 0;
  };
  void Loop();
  void Admit(std::shared_ptr<Job> job);
  // Whether `job` should wait for a sibling in a slot (or admitted in this round) to prefill.
  bool SiblingPrefilling(const Job& job, const std::vector<std::shared_ptr<Job>>& admitting) const;
  void Prefill(int32_t slot);
  void DecodeStep();
  // Speculative decoding: each drafting request's MTP slots that are missing, then its drafts
  // (Active::fed[1 ..]), in batched MTP passes.
  void Draft();
  // Runs MTP slots mtp_->n_past(slot) .. until - 1 of a slot alone, in prompt-sized chunks; the
  // tokens that follow them must be in its history (until < history.size()).
  void CatchUpMtp(int32_t slot, int64_t until);
  float* Hidden(int32_t slot, int64_t pos) {  // [D] the final hidden state of a cached position
    return hidden_.data() + (slot * options_.ctx_size + pos) * model_.config().hidden_size;
  }
  // Takes a sampled token (its text streamed); returns why the request ends with it, kNone
  // when it goes on (the token is then the next to feed).
  FinishReason Take(int32_t slot, int32_t token);
  void Release(int32_t slot, FinishReason reason);
  void PublishStats();

  const Model& model_;
  const Tokenizer& tokenizer_;
  const SchedulerOptions options_;
  Context ctx_;  // engine thread only
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  std::vector<float> logits_;         // [parallel * (draft + 1), vocab]
  std::vector<Context::Step> steps_;  // [parallel] the decode step's batch
  // Speculative decoding (draft_ > 0), engine thread only. The MTP state of slot s is sequence
  // s of mtp_: its slots i < mtp_->n_past(s) ran with the hidden state of position i and token
  // i + 1 of the slot's history (so n_past(s) < history.size(), or 0); hidden_ rows [0,
  // history.size()) of every slot are valid (every pass writes them, a prefix copy copies them).
  int64_t draft_ = 0;
  std::unique_ptr<MtpContext> mtp_;    // a sequence per slot
  AlignedArray<float> hidden_;         // [parallel, ctx_size, D]
  AlignedArray<float> verify_hidden_;  // [parallel * (draft + 1), D] of a verification pass
  AlignedArray<float> mtp_out_;        // [parallel * (draft + 1), D] MTP outputs y of a pass
  AlignedArray<float> y_;              // [parallel, D] each slot's y, chained into its next draft
  AlignedArray<float> draft_logits_;   // [parallel, vocab] of an MTP pass
  AlignedArray<float> draft_probs_;    // [parallel, draft, vocab] q of each draft
  std::vector<MtpContext::Step> mtp_steps_;  // [parallel] an MTP pass

  mutable std::mutex mu_;  // guards queue_, stop_, stats_
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
  int64_t free_slots_ = 0;  // also under mu_
  SchedulerStats stats_;    // published copy
  SchedulerStats work_;     // engine thread's running totals
  std::mutex join_mu_;
  std::thread thread_;
};

}  // namespace dsv3
