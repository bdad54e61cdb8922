#include "runtime/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"

namespace dsv3 {

using Clock = std::chrono::steady_clock;

bool Job::Wait(std::string* text, std::chrono::milliseconds timeout,
               std::vector<TokenLogprobs>* logprobs) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return done_ || !text_.empty() || !logprobs_.empty(); });
  text->append(text_);
  text_.clear();
  if (logprobs) {
    logprobs->insert(logprobs->end(), std::make_move_iterator(logprobs_.begin()),
                     std::make_move_iterator(logprobs_.end()));
  }
  logprobs_.clear();
  return done_;
}

void Job::Append(const std::string& text, const TokenLogprobs* logprobs) {
  if (text.empty() && logprobs == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  text_ += text;
  if (logprobs) logprobs_.push_back(*logprobs);
  cv_.notify_all();
}

void Job::Finish(FinishReason reason, std::vector<int32_t> tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  finish_ = reason;
  completion_tokens_ = static_cast<int64_t>(tokens.size());
  tokens_ = std::move(tokens);
  done_ = true;
  cv_.notify_all();
}

namespace {
// Whether speculative sampling gives what Sampler::Sample would: it knows no logit mask, bias or
// penalties, and reports no log-probabilities.
bool CanDraft(const ServeRequest& r) {
  const SamplingParams& p = r.options.generate.sampling;
  return !r.constraint && p.logprobs < 0 && p.logit_bias.empty() && p.frequency_penalty == 0 &&
         p.presence_penalty == 0;
}
}  // namespace

// A request in a slot: its sampler and text stream, and how far it has come.
struct Scheduler::Active {
  Active(std::shared_ptr<Job> j, const Tokenizer& tokenizer, const Config& c, bool mtp)
      : job(std::move(j)),
        sampler(job->request_.options.generate.sampling, c.vocab_size),
        text(tokenizer, c.eos_token_ids, job->request_.options),
        drafts(mtp && CanDraft(job->request_)) {
    // Decode steps then append without allocating.
    generated.reserve(static_cast<size_t>(job->request_.options.generate.max_new_tokens));
    if (job->request_.constraint) {
      mask = job->request_.constraint(job->request_.options.generate.max_new_tokens);
      sampler.set_mask(mask.get());
    }
  }
  std::shared_ptr<Job> job;
  std::unique_ptr<LogitMask> mask;  // ServeRequest::constraint's
  Sampler sampler;
  TokenTextStream text;
  size_t prefilled = 0;   // prompt tokens in the cache
  bool decoding = false;  // the prompt is done; `last` is the next token to feed
  int32_t last = 0;
  std::vector<int32_t> generated;
  FinishReason end = FinishReason::kNone;  // set by a decode step, which then releases it
  // Speculative decoding: whether this request drafts; in a decode step, its k drafts and
  // what the verification pass feeds (last, then the drafts), and the next tokens of the MTP
  // slots its first draft pass runs.
  const bool drafts;
  int64_t k = 0;
  int32_t fed[kMaxDraft + 1] = {};
  int32_t mtp_next[kMaxDraft + 1] = {};
};

namespace {
ContextOptions SlotOptions(const SchedulerOptions& o) {
  if (o.parallel < 1) Fail("--parallel must be at least 1, got {}", o.parallel);
  if (o.queue < 0) Fail("--queue must be >= 0, got {}", o.queue);
  if (o.prefill_chunk < 1) Fail("the prefill chunk must be at least 1 token");
  ContextOptions c;
  c.capacity = o.ctx_size;
  c.slots = o.parallel;
  if (o.draft < 0 || o.draft > kMaxDraft) {
    Fail("--draft must be between 1 and {}, got {}", kMaxDraft, o.draft);
  }
  // A decode step feeds each request's last token and its drafts.
  c.max_batch = std::max(o.prefill_chunk, o.parallel * (o.draft + 1));
  c.kv_cache = o.kv_cache;
  c.matmul = o.matmul;
  return c;
}
}  // namespace

Scheduler::Scheduler(const Model& model, const Tokenizer& tokenizer, const SchedulerOptions& o)
    : model_(model),
      tokenizer_(tokenizer),
      options_(o),
      ctx_(model, SlotOptions(o)),
      slots_(static_cast<size_t>(o.parallel)),
      logits_(static_cast<size_t>(o.parallel * (o.draft + 1) * model.config().vocab_size)),
      free_slots_(o.parallel) {
  steps_.reserve(static_cast<size_t>(o.parallel));
  for (Slot& slot : slots_) slot.history.reserve(static_cast<size_t>(o.ctx_size));
  if (o.draft > 0) {
    if (model.mtp().empty()) Fail("--draft: this checkpoint has no MTP module to draft with");
    if (model.group() != nullptr) Fail("--draft: not available with expert parallelism");
    const int64_t D = model.config().hidden_size, V = model.config().vocab_size;
    const int64_t B = o.parallel * (o.draft + 1);  // tokens of a verification pass
    draft_ = o.draft;
    mtp_ = std::make_unique<MtpContext>(model, 0, SlotOptions(o));
    hidden_.Resize(static_cast<size_t>(o.parallel * o.ctx_size * D), /*zero=*/false);
    verify_hidden_.Resize(static_cast<size_t>(B * D));
    mtp_out_.Resize(static_cast<size_t>(B * D));
    y_.Resize(static_cast<size_t>(o.parallel * D));
    draft_logits_.Resize(static_cast<size_t>(o.parallel * V));
    draft_probs_.Resize(static_cast<size_t>(o.parallel * o.draft * V));
    mtp_steps_.reserve(static_cast<size_t>(o.parallel));
    work_.draft = draft_;
  }
  PublishStats();
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Shutdown(); }

std::shared_ptr<Job> Scheduler::Submit(ServeRequest request) {
  const int64_t P = static_cast<int64_t>(request.prompt.size());
  const int64_t n = request.options.generate.max_new_tokens;
  if (P == 0) Fail("the prompt is empty");
  if (n < 1) Fail("max_new_tokens must be at least 1, got {}", n);
  // Every new token but the last is fed back.
  if (P + n - 1 > options_.ctx_size) {
    Fail("prompt ({} tokens) plus {} new tokens exceed the context size of {}", P, n,
         options_.ctx_size);
  }
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= model_.config().vocab_size) Fail("token id {} is out of range", id);
  }
  auto job = std::make_shared<Job>();
  job->request_ = std::move(request);
  job->prompt_tokens_ = P;
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || static_cast<int64_t>(queue_.size()) >= options_.queue + free_slots_) {
    ++stats_.requests_rejected;
    return nullptr;
  }
  queue_.push_back(job);
  stats_.queue_length = static_cast<int64_t>(queue_.size());
  cv_.notify_all();
  return job;
}

void Scheduler::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  std::lock_guard<std::mutex> lock(join_mu_);  // Shutdown may be called from several threads
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s = stats_;
  s.queue_length = static_cast<int64_t>(queue_.size());
  return s;
}

void Scheduler::Loop() {
  while (true) {
    bool busy = false;
    for (const Slot& s : slots_) busy |= s.active != nullptr;
    std::vector<std::shared_ptr<Job>> admit, dropped;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || busy || (!queue_.empty() && free_slots_ > 0); });
      if (stop_) break;
      // Requests cancelled while waiting never take a slot.
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->cancelled()) {
          dropped.push_back(*it);
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      // In order, except that a request waits while a sibling (the other choices of one request)
      // is still to prefill their common prompt: it then copies that cache instead.
      for (auto it = queue_.begin(); free_slots_ > 0 && it != queue_.end();) {
        if (SiblingPrefilling(**it, admit)) {
          ++it;
          continue;
        }
        admit.push_back(std::move(*it));
        it = queue_.erase(it);
        --free_slots_;
      }
    }
    for (const auto& job : dropped) job->Finish(FinishReason::kCancelled, {});
    work_.requests_cancelled += static_cast<int64_t>(dropped.size());
    try {
      for (auto& job : admit) Admit(std::move(job));
      for (size_t s = 0; s < slots_.size(); ++s) {
        if (slots_[s].active && slots_[s].active->job->cancelled()) {
          Release(static_cast<int32_t>(s), FinishReason::kCancelled);
        }
      }
      // One prompt chunk per joining request, then one decode step for all the others.
      for (size_t s = 0; s < slots_.size(); ++s) {
        if (slots_[s].active && !slots_[s].active->decoding) Prefill(static_cast<int32_t>(s));
      }
      DecodeStep();
    } catch (const std::exception& e) {
      // Submit checks what could fail here; should anything still (out of memory), the running
      // requests end and the engine goes on.
      std::fprintf(stderr, "dsv3: error in the engine: %s; cancelling the running requests\n",
                   e.what());
      for (size_t s = 0; s < slots_.size(); ++s) {
        if (slots_[s].active) Release(static_cast<int32_t>(s), FinishReason::kCancelled);
        ctx_.Truncate(static_cast<int32_t>(s), 0);
        if (mtp_) mtp_->Truncate(static_cast<int32_t>(s), 0);
        slots_[s].history.clear();
      }
    }
    PublishStats();
  }
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (slots_[s].active) Release(static_cast<int32_t>(s), FinishReason::kCancelled);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& job : queue_) job->Finish(FinishReason::kCancelled, {});
  queue_.clear();
}

bool Scheduler::SiblingPrefilling(const Job& job,
                                  const std::vector<std::shared_ptr<Job>>& admitting) const {
  const uint64_t group = job.request_.siblings;
  if (group == 0) return false;
  for (const std::shared_ptr<Job>& j : admitting) {
    if (j->request_.siblings == group) return true;
  }
  for (const Slot& slot : slots_) {
    if (slot.active && !slot.active->decoding && slot.active->job->request_.siblings == group) {
      return true;
    }
  }
  return false;
}

void Scheduler::Admit(std::shared_ptr<Job> job) {
  const std::vector<int32_t>& prompt = job->request_.prompt;
  // The slot whose cache shares the longest prefix with the prompt; at least the last prompt
  // token is always run, to get its logits.
  int32_t source = -1, target = -1;
  size_t common = 0;
  for (size_t s = 0; s < slots_.size(); ++s) {
    const std::vector<int32_t>& h = slots_[s].history;
    size_t n = 0;
    const size_t limit = std::min(h.size(), prompt.size() - 1);
    while (n < limit && h[n] == prompt[n]) ++n;
    if (n > common) common = n, source = static_cast<int32_t>(s);
  }
  if (source >= 0 && !slots_[source].active) {
    target = source;
  } else {
    // The free slot used longest ago keeps the caches of recent requests for reuse.
    for (size_t s = 0; s < slots_.size(); ++s) {
      if (!slots_[s].active && (target < 0 || slots_[s].last_used < slots_[target].last_used)) {
        target = static_cast<int32_t>(s);
      }
    }
  }
  Slot& slot = slots_[target];
  const int64_t n = static_cast<int64_t>(common);
  if (target == source || common == 0) {
    ctx_.Truncate(target, n);
    slot.history.resize(common);
    // MTP slot i needs token i + 1: those below n - 1 stay valid.
    if (mtp_) mtp_->Truncate(target, std::max<int64_t>(0, n - 1));
  } else {
    ctx_.CopyPrefix(source, target, n);
    slot.history.assign(prompt.begin(), prompt.begin() + static_cast<ptrdiff_t>(common));
    if (mtp_) {
      mtp_->CopyPrefix(source, target, std::min(mtp_->n_past(source), n - 1));
      std::memcpy(Hidden(target, 0), Hidden(source, 0),
                  static_cast<size_t>(n * model_.config().hidden_size) * sizeof(float));
    }
  }
  job->reused_tokens_ = static_cast<int64_t>(common);
  work_.prompt_tokens += static_cast<int64_t>(prompt.size());
  work_.prompt_tokens_reused += static_cast<int64_t>(common);
  slot.active = std::make_unique<Active>(std::move(job), tokenizer_, model_.config(), draft_ > 0);
  slot.active->prefilled = common;
  slot.last_used = ++clock_;
}

void Scheduler::Prefill(int32_t s) {
  Active& a = *slots_[s].active;
  const std::vector<int32_t>& prompt = a.job->request_.prompt;
  const size_t n =
      std::min<size_t>(static_cast<size_t>(options_.prefill_chunk), prompt.size() - a.prefilled);
  const Context::Step step{s, std::span<const int32_t>(prompt.data() + a.prefilled, n)};
  const auto t0 = Clock::now();
  // As generate: prompt chunks take the fast batched products.
  const int64_t at = ctx_.n_past(s), D = model_.config().hidden_size;
  ForwardOutputs out;  // with MTP: the chunk's hidden states, for drafting
  if (mtp_) out.hidden = std::span<float>(Hidden(s, at), n * D);
  ctx_.ForwardBatch(std::span<const Context::Step>(&step, 1), logits_.data(), /*exact=*/false, out);
  slots_[s].history.insert(slots_[s].history.end(), step.tokens.begin(), step.tokens.end());
  // As SpeculativeDecoder: the MTP slots whose next token is known run with the prompt.
  if (a.drafts) CatchUpMtp(s, ctx_.n_past(s) - 1);
  work_.prefill_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  a.prefilled += n;
  if (a.prefilled < prompt.size()) return;
  a.decoding = true;
  const FinishReason why = Take(s, a.sampler.Sample(logits_.data()));
  if (why != FinishReason::kNone) Release(s, why);
}

void Scheduler::CatchUpMtp(int32_t s, int64_t until) {
  const std::vector<int32_t>& h = slots_[s].history;
  while (mtp_->n_past(s) < until) {
    const int64_t i = mtp_->n_past(s), n = std::min(options_.prefill_chunk, until - i);
    const MtpContext::Step step{s, Hidden(s, i),
                                std::span<const int32_t>(h.data() + i + 1, static_cast<size_t>(n))};
    mtp_->ForwardBatch(std::span<const MtpContext::Step>(&step, 1), nullptr, /*exact=*/false);
  }
}

void Scheduler::DecodeStep() {
  bool drafting = false;
  for (size_t s = 0; s < slots_.size(); ++s) {
    Active* a = slots_[s].active.get();
    if (!a || !a->decoding) continue;
    // No more drafts than tokens still to come after this step's first; the verification
    // pass then stays within the slot (Submit's check).
    const int64_t remaining = a->job->request_.options.generate.max_new_tokens -
                              static_cast<int64_t>(a->generated.size());
    const int64_t room = options_.ctx_size - ctx_.n_past(static_cast<int32_t>(s)) - 1;
    a->k = a->drafts ? std::max<int64_t>(0, std::min({draft_, remaining - 1, room})) : 0;
    drafting |= a->k > 0;
  }
  const auto t0 = Clock::now();
  if (drafting) Draft();
  // One pass verifies every request's last token and drafts.
  steps_.clear();
  int64_t T = 0;
  for (size_t s = 0; s < slots_.size(); ++s) {
    Active* a = slots_[s].active.get();
    if (!a || !a->decoding) continue;
    a->fed[0] = a->last;
    steps_.push_back(
        {static_cast<int32_t>(s), std::span<const int32_t>(a->fed, static_cast<size_t>(a->k + 1))});
    T += a->k + 1;
  }
  if (steps_.empty()) return;
  const int64_t V = model_.config().vocab_size, D = model_.config().hidden_size;
  if (mtp_) {  // every token's logits, and the hidden states the next drafts need
    ctx_.ForwardBatch(steps_, nullptr, /*exact=*/true,
                      {.logits = std::span<float>(logits_.data(), T * V),
                       .hidden = std::span<float>(verify_hidden_.data(), T * D)});
  } else {
    ctx_.ForwardBatch(steps_, logits_.data(), /*exact=*/true);
  }
  ++work_.decode_steps;
  int64_t row = 0;  // of the step's first token
  for (const Context::Step& step : steps_) {
    const int32_t s = step.slot;
    Active& a = *slots_[s].active;
    const int64_t n = ctx_.n_past(s) - (a.k + 1);  // the position of a.last
    // Row j's logits predict the token after fed[j]: draft j + 1 is checked against row j, as
    // in SpeculativeDecoder::Verify; all accepted, the last row gives a bonus token.
    const float* logits = logits_.data() + row * V;
    int32_t out[kMaxDraft + 1];
    int64_t accepted = 0;
    for (; accepted < a.k; ++accepted) {
      const float* q = draft_probs_.data() + (s * draft_ + accepted) * V;
      if (!a.sampler.Verify(logits + accepted * V, a.fed[accepted + 1], q, &out[accepted])) break;
      out[accepted] = a.fed[accepted + 1];
    }
    if (accepted == a.k) out[accepted] = a.sampler.Sample(logits + a.k * V);
    work_.drafts_proposed += a.k;
    work_.drafts_accepted += accepted;
    // Emit the accepted drafts and the token after them until the request ends; the cache
    // keeps what was fed for them (the last token emitted is fed with the next step).
    int64_t emitted = 0;
    while (a.end == FinishReason::kNone && emitted <= accepted) a.end = Take(s, out[emitted++]);
    ctx_.Truncate(s, n + emitted);
    slots_[s].history.insert(slots_[s].history.end(), a.fed, a.fed + emitted);
    if (mtp_) {
      std::memcpy(Hidden(s, n), verify_hidden_.data() + row * D,
                  static_cast<size_t>(emitted * D) * sizeof(float));
    }
    work_.decode_tokens += emitted;
    row += a.k + 1;
  }
  work_.decode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  // Only now, so that the stats published with each end count the whole step.
  for (const Context::Step& step : steps_) {
    const FinishReason end = slots_[step.slot].active->end;
    if (end != FinishReason::kNone) Release(step.slot, end);
  }
}

void Scheduler::Draft() {
  const int64_t V = model_.config().vocab_size, D = model_.config().hidden_size;
  // The first pass: per drafting request, the MTP slots not yet run (those of the tokens the
  // last step kept; the last one with the newest token, a.last), whose last output predicts
  // the first draft.
  mtp_steps_.clear();
  for (size_t i = 0; i < slots_.size(); ++i) {
    const int32_t s = static_cast<int32_t>(i);
    Active* a = slots_[i].active.get();
    if (!a || !a->decoding || a->k == 0) continue;
    const int64_t n = ctx_.n_past(s);
    if (n - mtp_->n_past(s) > draft_ + 1) CatchUpMtp(s, n - 1);
    const int64_t m = mtp_->n_past(s);
    std::copy(slots_[i].history.begin() + m + 1, slots_[i].history.end(), a->mtp_next);
    a->mtp_next[n - 1 - m] = a->last;
    mtp_steps_.push_back(
        {s, Hidden(s, m), std::span<const int32_t>(a->mtp_next, static_cast<size_t>(n - m))});
  }
  for (int64_t j = 0; !mtp_steps_.empty(); ++j) {
    int64_t T = 0;
    for (const MtpContext::Step& step : mtp_steps_)
      T += static_cast<int64_t>(step.next_tokens.size());
    mtp_->ForwardBatch(mtp_steps_, draft_logits_.data(), /*exact=*/true,
                       {.hidden = std::span<float>(mtp_out_.data(), T * D)});
    // Draft j of each request from its step's last logits; its y feeds the next draft.
    int64_t row = 0;
    size_t next = 0;
    for (size_t i = 0; i < mtp_steps_.size(); ++i) {
      const int32_t s = mtp_steps_[i].seq;
      Active& a = *slots_[s].active;
      row += static_cast<int64_t>(mtp_steps_[i].next_tokens.size());
      a.fed[j + 1] = a.sampler.Draft(draft_logits_.data() + static_cast<int64_t>(i) * V,
                                     draft_probs_.data() + (s * draft_ + j) * V);
      if (j + 1 == a.k) continue;
      float* y = y_.data() + s * D;
      std::memcpy(y, mtp_out_.data() + (row - 1) * D, static_cast<size_t>(D) * sizeof(float));
      mtp_steps_[next++] = {s, y, std::span<const int32_t>(&a.fed[j + 1], 1)};
    }
    mtp_steps_.resize(next);
  }
  // The chained slots ran on drafts: they go (the verified ones run with the next step).
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Active* a = slots_[i].active.get();
    const int32_t s = static_cast<int32_t>(i);
    if (a && a->decoding && a->k > 0) mtp_->Truncate(s, ctx_.n_past(s));
  }
}

FinishReason Scheduler::Take(int32_t s, int32_t token) {
  Active& a = *slots_[s].active;
  a.generated.push_back(token);
  ++work_.tokens_generated;
  std::string text;
  const bool more = a.text.Push(token, &text);
  const bool wants = a.job->request_.options.generate.sampling.logprobs >= 0;
  a.job->Append(text, wants ? &a.sampler.logprobs() : nullptr);
  if (!more) return FinishReason::kStop;
  if (static_cast<int64_t>(a.generated.size()) >= a.job->request_.options.generate.max_new_tokens) {
    return FinishReason::kLength;
  }
  a.last = token;
  return FinishReason::kNone;
}

void Scheduler::Release(int32_t s, FinishReason reason) {
  Slot& slot = slots_[s];
  std::unique_ptr<Active> a = std::move(slot.active);
  if (reason != FinishReason::kCancelled) a->job->Append(a->text.Finish());
  (reason == FinishReason::kCancelled ? work_.requests_cancelled : work_.requests_finished)++;
  slot.last_used = ++clock_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++free_slots_;
  }
  PublishStats();  // before the caller hears of the end, so that its view of the stats agrees
  a->job->Finish(reason, std::move(a->generated));
}

void Scheduler::PublishStats() {
  SchedulerStats s = work_;
  s.slots = static_cast<int64_t>(slots_.size());
  s.capacity_per_slot = options_.ctx_size;
  for (const Slot& slot : slots_) {
    const int64_t n = static_cast<int64_t>(slot.history.size());
    s.kv_tokens_cached += n;
    if (slot.active) {
      ++s.slots_in_use;
      s.kv_tokens_in_use += n;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  s.requests_rejected = stats_.requests_rejected;
  stats_ = s;
}

}  // namespace dsv3
