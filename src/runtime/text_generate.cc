#include "runtime/text_generate.h"

#include <algorithm>

#include "core/error.h"
#include "runtime/speculative.h"

namespace dsv3 {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

std::string StopMatcher::Push(std::string_view text, bool* stopped) {
  held_ += text;
  *stopped = false;
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    *stopped = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the longest tail that is a proper prefix of some stop string. Stop strings are valid
  // UTF-8, so such a tail starts on a character boundary.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  out.swap(held_);
  return out;
}

TokenTextStream::TokenTextStream(const Tokenizer& tokenizer, const std::vector<int64_t>& eos_ids,
                                 const TextGenerateOptions& options)
    : tokenizer_(tokenizer),
      eos_(eos_ids),
      stop_at_eos_(options.generate.stop_at_eos),
      decoder_(tokenizer, options.skip_special_tokens),
      stop_(options.stop) {}

bool TokenTextStream::Push(int32_t token, std::string* text) {
  const bool is_eos = (tokenizer_.eos_id() && token == *tokenizer_.eos_id()) ||
                      std::find(eos_.begin(), eos_.end(), token) != eos_.end();
  if (is_eos && stop_at_eos_) {
    stopped_by_eos_ = true;
    return false;
  }
  // Ids the model can produce but the tokenizer lacks (padded vocabularies) print nothing.
  if (!tokenizer_.IsValidId(token)) return true;
  bool stopped = false;
  *text += stop_.Push(decoder_.Push(token), &stopped);
  stopped_by_string_ = stopped;
  return !stopped;
}

std::string TokenTextStream::Finish() {
  if (stopped_by_string_) return "";
  bool stopped = false;
  std::string text = stop_.Push(decoder_.Finish(), &stopped);
  stopped_by_string_ = stopped;
  if (!stopped) text += stop_.Flush();
  return text;
}

TextGenerateResult GenerateText(Context& ctx, const Tokenizer& tokenizer,
                                std::span<const int32_t> prompt, const TextGenerateOptions& options,
                                const std::function<void(std::string_view)>& on_text,
                                SpeculativeDecoder* speculative) {
  TextGenerateResult result;
  TokenTextStream stream(tokenizer, ctx.model().config().eos_token_ids, options);
  auto show = [&](const std::string& text) {
    if (text.empty()) return;
    result.text += text;
    if (on_text) on_text(text);
  };
  const auto on_token = [&](int32_t token) {
    std::string text;
    const bool more = stream.Push(token, &text);
    show(text);
    return more;
  };
  result.tokens = Generate(ctx, prompt, options.generate, &result.stats, on_token, speculative);
  show(stream.Finish());
  result.stopped_by_eos = stream.stopped_by_eos();
  result.stopped_by_string = stream.stopped_by_string();
  return result;
}

ChatSession::ChatSession(Context& ctx, const Tokenizer& tokenizer,
                         const ChatTemplate& chat_template, SpeculativeDecoder* speculative)
    : ctx_(ctx), speculative_(speculative), tokenizer_(tokenizer), template_(chat_template) {
  ctx_.Truncate(0);
  if (speculative_) speculative_->Truncate(0);
}

void ChatSession::AddMessage(const std::string& role, const std::string& content) {
  messages_.push_back({{"role", role}, {"content", content}});
}

TextGenerateResult ChatSession::Reply(const std::string& user, const TextGenerateOptions& options,
                                      const std::function<void(std::string_view)>& on_text) {
  AddMessage("user", user);
  // The template writes BOS itself; encode the rendered text without adding anything.
  const std::vector<int32_t> ids =
      tokenizer_.Encode(template_.Apply(messages_, /*add_generation_prompt=*/true));
  if (ids.empty()) Fail("the chat template rendered an empty prompt");
  size_t keep = 0;
  while (keep < cached_.size() && keep < ids.size() && cached_[keep] == ids[keep]) ++keep;
  keep = std::min(keep, ids.size() - 1);  // at least one token must run to get logits
  const int64_t room = ctx_.capacity() - static_cast<int64_t>(ids.size());
  if (room < 0) {
    Fail("the conversation ({} tokens) no longer fits the context of {} tokens (raise --ctx-size)",
         ids.size(), ctx_.capacity());
  }
  ctx_.Truncate(static_cast<int64_t>(keep));
  if (speculative_) speculative_->Truncate(static_cast<int64_t>(keep));
  cached_.resize(keep);
  reused_ = static_cast<int64_t>(keep);
  forwarded_ = static_cast<int64_t>(ids.size() - keep);

  TextGenerateOptions o = options;
  // Every new token but the last is fed back, so room + 1 tokens fit.
  o.generate.max_new_tokens = std::min(o.generate.max_new_tokens, room + 1);
  const std::span<const int32_t> fresh(ids.data() + keep, ids.size() - keep);
  TextGenerateResult r = GenerateText(ctx_, tokenizer_, fresh, o, on_text, speculative_);
  cached_.insert(cached_.end(), fresh.begin(), fresh.end());
  // The cache holds every generated token except the last (never fed back).
  if (!r.tokens.empty()) cached_.insert(cached_.end(), r.tokens.begin(), r.tokens.end() - 1);
  AddMessage("assistant", r.text);
  return r;
}

}  // namespace dsv3
