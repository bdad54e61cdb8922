#include "server/tools.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace dsv3::server {
namespace {

constexpr std::string_view kType = "function";
constexpr std::string_view kFenceOpen = "\n```json\n";  // after the name (V3)
constexpr std::string_view kFenceClose = "\n```";       // after the arguments (V3)

std::string_view Trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

bool Starts(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// The length of the longest suffix of `text` that is a proper prefix of `marker`.
size_t PartialMarker(std::string_view text, std::string_view marker) {
  for (size_t n = std::min(text.size(), marker.size() - 1); n > 0; --n) {
    if (text.substr(text.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

// A call's text between its begin and end markers.
ToolCall ParseCall(std::string_view inner) {
  ToolCall call;
  inner = Trim(inner);
  const size_t sep = inner.find(kToolSep);
  if (sep == std::string_view::npos) {
    call.name = std::string(inner);
    return call;
  }
  std::string_view head = Trim(inner.substr(0, sep)), rest = inner.substr(sep + kToolSep.size());
  if (head == kType) {  // V3: function<sep>NAME\n```json\nARGS\n```
    const size_t nl = rest.find('\n');
    call.name = std::string(Trim(rest.substr(0, nl)));
    rest = nl == std::string_view::npos ? std::string_view() : Trim(rest.substr(nl + 1));
    if (Starts(rest, "```")) {
      rest.remove_prefix(3);
      if (Starts(rest, "json")) rest.remove_prefix(4);
    }
    rest = Trim(rest);
    if (rest.size() >= 3 && rest.substr(rest.size() - 3) == "```") rest.remove_suffix(3);
  } else {  // V3.1: NAME<sep>ARGS
    call.name = std::string(head);
  }
  call.arguments = std::string(Trim(rest));
  return call;
}

}  // namespace

std::optional<ToolMarkup> FindToolMarkup(const Tokenizer& tokenizer,
                                         std::string_view chat_template) {
  ToolMarkup m;
  const std::pair<std::string_view, int32_t*> markers[] = {{kCallsBegin, &m.calls_begin},
                                                           {kCallsEnd, &m.calls_end},
                                                           {kCallBegin, &m.call_begin},
                                                           {kCallEnd, &m.call_end},
                                                           {kToolSep, &m.sep}};
  for (const auto& [text, id] : markers) {
    const std::optional<int32_t> t = tokenizer.TokenToId(text);
    if (!t) return std::nullopt;
    *id = *t;
  }
  const bool writes_calls = chat_template.find(kCallBegin) != std::string_view::npos;
  m.format = writes_calls && chat_template.find("```json") == std::string_view::npos
                 ? ToolFormat::kV31
                 : ToolFormat::kV3;
  return m;
}

OrderedJson WithToolPrompt(const OrderedJson& messages, const OrderedJson& tools,
                           ToolFormat format) {
  std::string p =
      "## Tools\n\nYou can call the functions below. Their parameters are given as "
      "JSON Schema.\n";
  for (const OrderedJson& tool : tools) {
    const OrderedJson& f = tool["function"];
    p += fmt::format("\n### {}\n", f["name"].get<std::string>());
    if (f.contains("description") && f["description"].is_string()) {
      p += f["description"].get<std::string>() + "\n";
    }
    p += "Parameters: " +
         (f.contains("parameters") ? f["parameters"].dump() : std::string(R"({"type":"object"})")) +
         "\n";
  }
  p += fmt::format(
      "\nTo call functions, answer with this markup (one block for all calls, "
      "the arguments as one JSON object per call):\n{}{}",
      kCallsBegin, kCallBegin);
  if (format == ToolFormat::kV3) {
    p += fmt::format(
        "function{}NAME\n```json\nARGUMENTS\n```{}\n{}function{}NAME\n```json\n"
        "ARGUMENTS\n```{}{}",
        kToolSep, kCallEnd, kCallBegin, kToolSep, kCallEnd, kCallsEnd);
  } else {
    p += fmt::format("NAME{}ARGUMENTS{}{}NAME{}ARGUMENTS{}{}", kToolSep, kCallEnd, kCallBegin,
                     kToolSep, kCallEnd, kCallsEnd);
  }
  p += "\nOtherwise, answer in plain text.";
  OrderedJson out = OrderedJson::array();
  size_t i = 0;
  while (i < messages.size() && messages[i]["role"] == "system") out.push_back(messages[i++]);
  out.push_back({{"role", "system"}, {"content", p}});
  while (i < messages.size()) out.push_back(messages[i++]);
  return out;
}

ToolCallParser::Parts ToolCallParser::Push(std::string_view text) {
  held_ += text;
  Parts out;
  Run(&out);
  return out;
}

ToolCallParser::Parts ToolCallParser::Finish() {
  Parts out;
  Run(&out);
  if (!in_calls_) {
    out.content += held_;  // text that only looked like the marker's start
  } else if (const size_t at = held_.find(kCallBegin); at != std::string::npos) {
    // A call cut short (max_tokens): returned with what it has, as OpenAI does.
    const std::string_view inner = std::string_view(held_).substr(at + kCallBegin.size());
    const size_t sep = inner.find(kToolSep);
    // The name is whole once the separator follows it (V3.1) or a newline does (V3).
    const bool named =
        sep != std::string_view::npos &&
        (Trim(inner.substr(0, sep)) != kType || inner.find('\n', sep) != std::string_view::npos);
    ToolCall call = ParseCall(inner);
    if (named && !call.name.empty()) {
      out.calls.push_back(std::move(call));
      ++calls_;
    }
  }
  held_.clear();
  return out;
}

void ToolCallParser::Run(Parts* out) {
  while (true) {
    if (!in_calls_) {
      const size_t at = held_.find(kCallsBegin);
      if (at == std::string::npos) {
        const size_t keep = PartialMarker(held_, kCallsBegin);
        out->content += held_.substr(0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
        return;
      }
      out->content += held_.substr(0, at);
      held_.erase(0, at + kCallsBegin.size());
      in_calls_ = true;
      continue;
    }
    const std::string_view rest = Trim(held_);
    if (Starts(rest, kCallsEnd)) {
      held_.erase(0, held_.find(kCallsEnd) + kCallsEnd.size());
      in_calls_ = false;
      continue;
    }
    const size_t end = held_.find(kCallEnd);
    if (!Starts(rest, kCallBegin) || end == std::string::npos) return;  // wait for more
    const size_t begin = held_.find(kCallBegin) + kCallBegin.size();
    out->calls.push_back(ParseCall(std::string_view(held_).substr(begin, end - begin)));
    ++calls_;
    held_.erase(0, end + kCallEnd.size());
  }
}

ToolCallMask::ToolCallMask(std::shared_ptr<const SchemaVocabulary> vocabulary, int64_t max_tokens,
                           const ToolMarkup& markup,
                           std::shared_ptr<const ToolConstraint> constraint)
    : vocabulary_(std::move(vocabulary)),
      tokenizer_(vocabulary_->tokenizer()),
      vocab_(vocabulary_->vocab()),
      markup_(markup),
      constraint_(std::move(constraint)),
      left_(max_tokens),
      stack_(vocabulary_->longest() + 1) {
  const Tokenizer& tokenizer = tokenizer_;
  if (constraint_->names.size() > 128 ||
      constraint_->names.size() != constraint_->parameters.size() || constraint_->names.empty()) {
    Fail("a tool constraint needs 1-128 functions, each with its parameters");
  }
  // The fewest tokens known to spell each remaining piece: its bytes one token each, or the
  // tokenizer's own encoding of it when shorter (both are sequences the mask lets through).
  const auto cost = [&](std::string_view text) {
    std::vector<int64_t> c(text.size() + 1, 0);
    for (size_t pos = 0; pos < text.size(); ++pos) {
      c[pos] = std::min<int64_t>(static_cast<int64_t>(text.size() - pos),
                                 static_cast<int64_t>(tokenizer.Encode(text.substr(pos)).size()));
    }
    return c;
  };
  literal_cost_ = {cost(kType), cost(kFenceOpen), cost(kFenceClose)};
  for (size_t i = 0; i < constraint_->names.size(); ++i) {
    name_cost_.push_back(cost(constraint_->names[i]));
    args_min_.push_back(SchemaPrefix(constraint_->parameters[i].get()).ClosingBytes());
  }
  if (constraint_->mode == ToolConstraint::Mode::kRequired) {
    Enter(&state_, Stage::kCallsBegin);
    // Too small a budget for any call: constrain the form only (the answer ends at the limit).
    budgeted_ = TokensToFinish(state_) <= left_;
  }
}

bool ToolCallMask::IsMarker(int32_t id) const {
  return id == markup_.calls_begin || id == markup_.calls_end || id == markup_.call_begin ||
         id == markup_.call_end || id == markup_.sep;
}

void ToolCallMask::Enter(State* s, Stage stage) const {
  s->stage = stage;
  s->pos = 0;
  if (stage == Stage::kName) {
    s->candidates.reset();
    for (size_t i = 0; i < constraint_->names.size(); ++i) s->candidates.set(i);
    s->chosen = -1;
  }
  if (stage == Stage::kArgs) {
    s->args.emplace(constraint_->parameters[static_cast<size_t>(s->chosen)].get());
  } else {
    s->args.reset();
  }
}

bool ToolCallMask::FeedByte(State* s, uint8_t c) const {
  const bool v3 = markup_.format == ToolFormat::kV3;
  const auto literal = [&](std::string_view text, Stage next) {
    if (s->pos >= text.size() || static_cast<uint8_t>(text[s->pos]) != c) return false;
    if (++s->pos == text.size()) Enter(s, next);
    return true;
  };
  switch (s->stage) {
    case Stage::kType:
      return literal(kType, Stage::kTypeSep);
    case Stage::kName: {
      const std::vector<std::string>& names = constraint_->names;
      if (v3 && c == '\n') {
        for (size_t i = 0; i < names.size(); ++i) {
          if (s->candidates.test(i) && names[i].size() == s->pos) {
            s->chosen = static_cast<int16_t>(i);
            s->stage = Stage::kNameEnd;
            s->pos = 1;  // the fence's first byte
            return true;
          }
        }
        return false;
      }
      std::bitset<128> next;
      for (size_t i = 0; i < names.size(); ++i) {
        if (s->candidates.test(i) && names[i].size() > s->pos &&
            static_cast<uint8_t>(names[i][s->pos]) == c) {
          next.set(i);
        }
      }
      if (next.none()) return false;
      s->candidates = next;
      ++s->pos;
      return true;
    }
    case Stage::kNameEnd:
      return v3 && literal(kFenceOpen, Stage::kArgs);
    case Stage::kArgs:
      // The object starts at once: no whitespace before it (the markup has its own newline).
      if (s->pos == 0 && c != '{') return false;
      s->pos = 1;
      if (!s->args->Feed(c)) return false;
      if (s->args->complete()) Enter(s, v3 ? Stage::kFenceEnd : Stage::kCallEnd);
      return true;
    case Stage::kFenceEnd:
      return literal(kFenceClose, Stage::kCallEnd);
    case Stage::kNext:
      if (!v3 || c != '\n' || !constraint_->parallel) return false;
      Enter(s, Stage::kNextBegin);
      return true;
    default:
      return false;  // a marker or EOS must come
  }
}

bool ToolCallMask::FeedMarker(State* s, int32_t m) const {
  const bool v3 = markup_.format == ToolFormat::kV3;
  switch (s->stage) {
    case Stage::kFree:
      if (m != markup_.calls_begin || constraint_->mode != ToolConstraint::Mode::kAuto)
        return false;
      Enter(s, Stage::kCallBegin);
      return true;
    case Stage::kCallsBegin:
      if (m != markup_.calls_begin) return false;
      Enter(s, Stage::kCallBegin);
      return true;
    case Stage::kCallBegin:
    case Stage::kNextBegin:
      if (m != markup_.call_begin) return false;
      Enter(s, v3 ? Stage::kType : Stage::kName);
      return true;
    case Stage::kTypeSep:
      if (m != markup_.sep) return false;
      Enter(s, Stage::kName);
      return true;
    case Stage::kName:
      if (v3 || m != markup_.sep) return false;
      for (size_t i = 0; i < constraint_->names.size(); ++i) {
        if (s->candidates.test(i) && constraint_->names[i].size() == s->pos) {
          s->chosen = static_cast<int16_t>(i);
          Enter(s, Stage::kArgs);
          return true;
        }
      }
      return false;
    case Stage::kCallEnd:
      if (m != markup_.call_end) return false;
      ++s->calls;
      Enter(s, Stage::kNext);
      return true;
    case Stage::kNext:
      if (m == markup_.calls_end) {
        Enter(s, Stage::kEos);
        return true;
      }
      if (v3 || m != markup_.call_begin || !constraint_->parallel) return false;
      Enter(s, Stage::kName);
      return true;
    default:
      return false;
  }
}

bool ToolCallMask::Feed(State* s, int32_t token) const {
  if (IsMarker(token)) return FeedMarker(s, token);
  if (!tokenizer_.IsValidId(token) || tokenizer_.IsSpecial(token)) return false;
  const std::string_view bytes = tokenizer_.TokenBytes(token);
  if (bytes.empty()) return false;
  for (const char c : bytes) {
    if (!FeedByte(s, static_cast<uint8_t>(c))) return false;
  }
  return true;
}

int64_t ToolCallMask::TokensToFinish(const State& s) const {
  const bool v3 = markup_.format == ToolFormat::kV3;
  const auto lit = [&](int which, size_t pos) { return literal_cost_[which][pos]; };
  // After the arguments: the closing fence (V3), the call's end, the calls' end and EOS.
  const int64_t after_args = (v3 ? lit(2, 0) : 0) + 1 + 2;
  // From the name's byte `pos` on, for function i.
  const auto from_name = [&](size_t i, size_t pos) {
    return name_cost_[i][pos] + (v3 ? lit(1, 0) : 1) + args_min_[i] + after_args;
  };
  const auto best_call = [&](size_t pos, const std::bitset<128>* candidates) {
    int64_t best = std::numeric_limits<int64_t>::max();
    for (size_t i = 0; i < name_cost_.size(); ++i) {
      if ((candidates && !candidates->test(i)) || name_cost_[i].size() <= pos) continue;
      best = std::min(best, from_name(i, pos));
    }
    return best;
  };
  const int64_t type_part = v3 ? lit(0, 0) + 1 : 0;  // function<sep>
  switch (s.stage) {
    case Stage::kFree:
      return 1;  // EOS
    case Stage::kCallsBegin:
      return 2 + type_part + best_call(0, nullptr);
    case Stage::kCallBegin:
    case Stage::kNextBegin:
      return 1 + type_part + best_call(0, nullptr);
    case Stage::kType:
      return lit(0, s.pos) + 1 + best_call(0, nullptr);
    case Stage::kTypeSep:
      return 1 + best_call(0, nullptr);
    case Stage::kName:
      return best_call(s.pos, &s.candidates);
    case Stage::kNameEnd:
      return lit(1, s.pos) + args_min_[static_cast<size_t>(s.chosen)] + after_args;
    case Stage::kArgs:
      return s.args->ClosingBytes() + after_args;
    case Stage::kFenceEnd:
      return lit(2, s.pos) + 1 + 2;
    case Stage::kCallEnd:
      return 1 + 2;
    case Stage::kNext:
      return 2;
    case Stage::kEos:
      return 1;
  }
  return 1;
}

void ToolCallMask::Apply(float* logits) {
  constexpr float kOff = -std::numeric_limits<float>::infinity();
  const auto off = [&](int32_t id) {
    if (id >= 0 && id < vocab_) logits[id] = kOff;
  };
  if (state_.stage == Stage::kFree) {  // free text: only the markers are decided here
    for (const int32_t m : {markup_.calls_end, markup_.call_begin, markup_.call_end, markup_.sep})
      off(m);
    State next = state_;
    if (!FeedMarker(&next, markup_.calls_begin) || TokensToFinish(next) > left_ - 1) {
      off(markup_.calls_begin);
    }
    return;
  }
  const SchemaVocabulary& voc = *vocabulary_;
  const bool last = state_.stage == Stage::kEos;
  bool any = false;
  for (const int32_t id : voc.others()) {  // EOS, special and unknown ids
    if (last && voc.IsEos(id)) {
      any = true;
    } else {
      logits[id] = kOff;
    }
  }
  const auto fits = [&](const State& s) { return !budgeted_ || TokensToFinish(s) <= left_ - 1; };
  // Text tokens: walked byte by byte (the markers are single tokens, decided below; the walk
  // refuses them, so their logits are kept first).
  const int32_t markers[] = {markup_.calls_begin, markup_.calls_end, markup_.call_begin,
                             markup_.call_end, markup_.sep};
  float kept[5];
  for (int k = 0; k < 5; ++k) kept[k] = logits[markers[k]];
  const bool in_string = state_.stage == Stage::kArgs && state_.args->between_string_characters();
  any |= voc.Walk(
      state_, stack_, in_string && !last, fits(state_),
      [this](State& s, uint8_t c) { return FeedByte(&s, c); }, fits,
      [&](int32_t id) { return last || IsMarker(id); }, logits);
  for (int k = 0; k < 5; ++k) {
    State next = state_;
    const bool ok = FeedMarker(&next, markers[k]) && fits(next);
    logits[markers[k]] = ok ? kept[k] : kOff;
    any |= ok;
  }
  if (!any) {  // cannot happen with a byte-level vocabulary; end rather than emit garbage
    for (const int32_t e : voc.eos()) {
      if (e >= 0 && e < vocab_) logits[e] = 0;
    }
  }
}

void ToolCallMask::Accept(int32_t token) {
  --left_;
  if (vocabulary_->IsEos(token)) return;
  if (state_.stage == Stage::kFree && !IsMarker(token)) return;
  State next = state_;
  if (Feed(&next, token)) state_ = std::move(next);
}

}  // namespace dsv3::server
