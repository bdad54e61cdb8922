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

TextGenerateResult GenerateText(Context& ctx, const Tokenizer& tokenizer,
                                std::span<const int32_t> prompt, const TextGenerateOptions& options,
                                const std::function<void(std::string_view)>& on_text,
                                SpeculativeDecoder* speculative) {
  TextGenerateResult result;
  StreamDecoder decoder(tokenizer, options.skip_special_tokens);
  StopMatcher stop(options.stop);
  const std::vector<int64_t>& eos = ctx.model().config().eos_token_ids;
  auto show = [&](const std::string& text) {
    if (text.empty()) return;
    result.text += text;
    if (on_text) on_text(text);
  };
  const auto on_token = [&](int32_t token) {
    const bool is_eos = (tokenizer.eos_id() && token == *tokenizer.eos_id()) ||
                        std::find(eos.begin(), eos.end(), token) != eos.end();
    if (is_eos && options.generate.stop_at_eos) {
      result.stopped_by_eos = true;
      return false;
    }
    // Ids the model can produce but the tokenizer lacks (padded vocabularies) print nothing.
    if (!tokenizer.IsValidId(token)) return true;
    bool stopped = false;
    show(stop.Push(decoder.Push(token), &stopped));
    result.stopped_by_string = stopped;
    return !stopped;
  };
  result.tokens = Generate(ctx, prompt, options.generate, &result.stats, on_token, speculative);
  if (!result.stopped_by_string) {
    bool stopped = false;
    show(stop.Push(decoder.Finish(), &stopped));
    result.stopped_by_string = stopped;
    if (!stopped) show(stop.Flush());
  }
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
