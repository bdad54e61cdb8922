// Tool calls in DeepSeek's markup (OpenAI's `tools`): the prompt that shows the functions to the
// model, the decoding constraint that makes the model's calls well formed, and the parser that
// turns its output back into OpenAI `tool_calls`.
//
// DeepSeek-V3 and R1 write calls as
//   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```
//   <｜tool▁call▁end｜>  (then "\n" and the next call, or <｜tool▁calls▁end｜>)
// and V3.1 as
//   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>...
// where the five markers are single tokens of the vocabulary.
#pragma once

#include <bitset>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "runtime/json_schema.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::server {

enum class ToolFormat { kV3, kV31 };

// The marker tokens, and which format the model writes.
struct ToolMarkup {
  ToolFormat format = ToolFormat::kV3;
  int32_t calls_begin = -1, calls_end = -1, call_begin = -1, call_end = -1, sep = -1;
};

inline constexpr std::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
inline constexpr std::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
inline constexpr std::string_view kCallBegin = "<｜tool▁call▁begin｜>";
inline constexpr std::string_view kCallEnd = "<｜tool▁call▁end｜>";
inline constexpr std::string_view kToolSep = "<｜tool▁sep｜>";

// The markup of a tokenizer that has DeepSeek's five marker tokens (nullopt otherwise). The format
// is V3.1's when the chat template writes calls without the ```json fence, else V3's.
std::optional<ToolMarkup> FindToolMarkup(const Tokenizer& tokenizer,
                                         std::string_view chat_template);

// For templates that do not show `tools` to the model (DeepSeek-V3's and R1's ignore them): a
// system message listing the functions (name, description, parameters) and the markup to call
// them with, inserted after the leading system messages.
OrderedJson WithToolPrompt(const OrderedJson& messages, const OrderedJson& tools,
                           ToolFormat format);

// One parsed call: the function's name and its arguments as the model wrote them (JSON text).
struct ToolCall {
  std::string name, arguments;
};

// Splits generated text into content and tool calls, incrementally: Push returns the content
// that can be shown now (holding back what could be the start of the calls marker) and the calls
// completed by this text.
class ToolCallParser {
 public:
  struct Parts {
    std::string content;
    std::vector<ToolCall> calls;
  };
  Parts Push(std::string_view text);
  // At the end of the output: the held-back text; a call cut short (by max_tokens) with the
  // part of its arguments it has (the markup is never returned as content).
  Parts Finish();
  int64_t calls() const { return calls_; }

 private:
  void Run(Parts* out);
  bool in_calls_ = false;
  std::string held_;
  int64_t calls_ = 0;
};

// How decoding is constrained for a request with tools.
struct ToolConstraint {
  enum class Mode {
    kNone,      // tool_choice "none": the calls marker is never sampled
    kAuto,      // free text; once the model opens the calls marker, the calls are constrained
    kRequired,  // the answer is one or more calls (of any of the functions)
  } mode = Mode::kAuto;
  std::vector<std::string> names;                             // [functions] allowed
  std::vector<std::shared_ptr<const JsonSchema>> parameters;  // [functions] argument schemas
  bool parallel = true;                                       // more than one call
};

// The LogitMask of ToolConstraint: in a call, only tokens that continue the markup, one of the
// allowed names and arguments valid for that function's schema pass; after the calls only EOS.
// Like JsonSchemaMask, every token leaves room to finish the calls within the token budget.
class ToolCallMask : public LogitMask {
 public:
  // `vocabulary`: the model's, shared between requests (see SchemaVocabulary); `max_tokens`:
  // the answer's token budget.
  ToolCallMask(std::shared_ptr<const SchemaVocabulary> vocabulary, int64_t max_tokens,
               const ToolMarkup& markup, std::shared_ptr<const ToolConstraint> constraint);
  void Apply(float* logits) override;
  void Accept(int32_t token) override;

  // The grammar's position (exposed for tests).
  enum class Stage : uint8_t {
    kFree,        // auto / none: text, before any call
    kCallsBegin,  // the calls marker
    kCallBegin,   // a call's marker
    kType,        // V3: "function"
    kTypeSep,     // V3: the separator after it
    kName,        // the function's name
    kNameEnd,     // V3: "\n```json\n" after the name; V3.1: the separator
    kArgs,        // the arguments: a JSON object of the function's schema
    kFenceEnd,    // V3: "\n```"
    kCallEnd,     // the call's end marker
    kNext,        // another call (V3: "\n" first) or the calls' end marker
    kNextBegin,   // V3: after that "\n", the next call's marker
    kEos,         // only EOS
  };
  Stage stage() const { return state_.stage; }

 private:
  struct State {
    Stage stage = Stage::kFree;
    uint16_t pos = 0;             // bytes of the current literal or name matched
    int16_t chosen = -1;          // the function being called
    std::bitset<128> candidates;  // kName: functions whose names match so far
    int64_t calls = 0;            // calls completed
    std::optional<SchemaPrefix> args;
  };
  // Feeds one token to `s`; false when it cannot continue the calls.
  bool Feed(State* s, int32_t token) const;
  bool FeedByte(State* s, uint8_t c) const;
  bool FeedMarker(State* s, int32_t marker) const;
  void Enter(State* s, Stage stage) const;
  // The fewest tokens that finish the calls from `s`, EOS included.
  int64_t TokensToFinish(const State& s) const;
  bool IsMarker(int32_t id) const;

  const std::shared_ptr<const SchemaVocabulary> vocabulary_;
  const Tokenizer& tokenizer_;
  const int64_t vocab_;
  const ToolMarkup markup_;
  const std::shared_ptr<const ToolConstraint> constraint_;
  int64_t left_;
  bool budgeted_ = true;
  State state_;
  std::vector<State> stack_;  // [longest token + 1] the walk's states (SchemaVocabulary::Walk)
  // The fewest tokens that spell a piece from byte `pos` on ([pos], the last entry 0): the
  // literals "function", the opening fence and the closing fence; each function's name.
  std::vector<std::vector<int64_t>> literal_cost_, name_cost_;
  std::vector<int64_t> args_min_;  // [functions] the shortest arguments' bytes
};

}  // namespace dsv3::server
