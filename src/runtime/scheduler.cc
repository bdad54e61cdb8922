#include "runtime/scheduler.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "runtime/json_constraint.h"
#include "runtime/sampler.h"

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

// A request in a slot: its sampler and text stream, and how far it has come.
struct Scheduler::Active {
  Active(std::shared_ptr<Job> j, const Tokenizer& tokenizer, const Config& c)
      : job(std::move(j)),
        sampler(job->request_.options.generate.sampling, c.vocab_size),
        text(tokenizer, c.eos_token_ids, job->request_.options) {
    // Decode steps then append without allocating.
    generated.reserve(static_cast<size_t>(job->request_.options.generate.max_new_tokens));
    if (job->request_.json_object) {
      std::vector<int32_t> eos(c.eos_token_ids.begin(), c.eos_token_ids.end());
      if (tokenizer.eos_id()) eos.push_back(*tokenizer.eos_id());
      json = std::make_unique<JsonObjectMask>(tokenizer, c.vocab_size, std::move(eos),
                                              job->request_.options.generate.max_new_tokens);
      sampler.set_mask(json.get());
    }
  }
  std::shared_ptr<Job> job;
  std::unique_ptr<JsonObjectMask> json;  // response_format json_object
  Sampler sampler;
  TokenTextStream text;
  size_t prefilled = 0;   // prompt tokens in the cache
  bool decoding = false;  // the prompt is done; `last` is the next token to feed
  int32_t last = 0;
  std::vector<int32_t> generated;
};

namespace {
ContextOptions SlotOptions(const SchedulerOptions& o) {
  if (o.parallel < 1) Fail("--parallel must be at least 1, got {}", o.parallel);
  if (o.queue < 0) Fail("--queue must be >= 0, got {}", o.queue);
  if (o.prefill_chunk < 1) Fail("the prefill chunk must be at least 1 token");
  ContextOptions c;
  c.capacity = o.ctx_size;
  c.slots = o.parallel;
  c.max_batch = std::max(o.prefill_chunk, o.parallel);
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
      logits_(static_cast<size_t>(o.parallel * model.config().vocab_size)),
      next_(static_cast<size_t>(o.parallel)),
      free_slots_(o.parallel) {
  steps_.reserve(static_cast<size_t>(o.parallel));
  for (Slot& slot : slots_) slot.history.reserve(static_cast<size_t>(o.ctx_size));
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
  if (target == source || common == 0) {
    ctx_.Truncate(target, static_cast<int64_t>(common));
    slot.history.resize(common);
  } else {
    ctx_.CopyPrefix(source, target, static_cast<int64_t>(common));
    slot.history.assign(prompt.begin(), prompt.begin() + static_cast<ptrdiff_t>(common));
  }
  job->reused_tokens_ = static_cast<int64_t>(common);
  work_.prompt_tokens += static_cast<int64_t>(prompt.size());
  work_.prompt_tokens_reused += static_cast<int64_t>(common);
  slot.active = std::make_unique<Active>(std::move(job), tokenizer_, model_.config());
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
  ctx_.ForwardBatch(std::span<const Context::Step>(&step, 1), logits_.data(), /*exact=*/false);
  work_.prefill_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  slots_[s].history.insert(slots_[s].history.end(), step.tokens.begin(), step.tokens.end());
  a.prefilled += n;
  if (a.prefilled < prompt.size()) return;
  a.decoding = true;
  Accept(s, a.sampler.Sample(logits_.data()));
}

void Scheduler::DecodeStep() {
  steps_.clear();
  for (size_t s = 0; s < slots_.size(); ++s) {
    const Active* a = slots_[s].active.get();
    if (a && a->decoding) {
      steps_.push_back({static_cast<int32_t>(s), std::span<const int32_t>(&a->last, 1)});
    }
  }
  if (steps_.empty()) return;
  const auto t0 = Clock::now();
  ctx_.ForwardBatch(steps_, logits_.data(), /*exact=*/true);
  const int64_t V = model_.config().vocab_size;
  for (size_t i = 0; i < steps_.size(); ++i) {
    next_[i] =
        slots_[steps_[i].slot].active->sampler.Sample(logits_.data() + static_cast<int64_t>(i) * V);
  }
  work_.decode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  ++work_.decode_steps;
  work_.decode_tokens += static_cast<int64_t>(steps_.size());
  for (size_t i = 0; i < steps_.size(); ++i) {
    const int32_t s = steps_[i].slot;
    slots_[s].history.push_back(slots_[s].active->last);
    Accept(s, next_[i]);
  }
}

bool Scheduler::Accept(int32_t s, int32_t token) {
  Active& a = *slots_[s].active;
  a.generated.push_back(token);
  ++work_.tokens_generated;
  std::string text;
  const bool more = a.text.Push(token, &text);
  const bool wants = a.job->request_.options.generate.sampling.logprobs >= 0;
  a.job->Append(text, wants ? &a.sampler.logprobs() : nullptr);
  if (!more) {
    Release(s, FinishReason::kStop);
    return false;
  }
  if (static_cast<int64_t>(a.generated.size()) >= a.job->request_.options.generate.max_new_tokens) {
    Release(s, FinishReason::kLength);
    return false;
  }
  a.last = token;
  return true;
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
