// Parsing and validation of OpenAI API request bodies (/v1/chat/completions, /v1/completions):
// a pure function from the body bytes to a typed request or an OpenAI-shaped error with its HTTP
// status, so that it can be unit tested and fuzzed without a server.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/json.h"
#include "runtime/json_schema.h"
#include "runtime/sampler.h"

namespace dsv3::server {

enum class Endpoint { kChat, kCompletion };

// {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field ("" -> null)
  std::string code;   // a short machine-readable reason ("" -> null)
  OrderedJson ToJson() const;
};

// tool_choice: "none" (never call), "auto" (the model decides), "required" (at least one call),
// or {"type": "function", "function": {"name": ...}} (call that one).
enum class ToolChoice { kNone, kAuto, kRequired, kFunction };

struct ApiRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;                            // as sent ("" when absent)
  OrderedJson messages = OrderedJson::array();  // chat: [{role, content}], content a string
  std::string prompt;                           // completions
  std::optional<int64_t> max_tokens;            // absent: what the context has room for
  SamplingParams sampling;                      // temperature defaults to 1, as OpenAI's
  bool seeded = false;                          // whether `seed` was given
  std::vector<std::string> stop;                // at most kMaxStops, none empty
  bool stream = false, include_usage = false;
  int64_t n = 1;             // choices, 1 .. kMaxChoices (the server also bounds it by its slots)
  bool json_object = false;  // chat: response_format {"type": "json_object"}
  // chat: the answer's schema: response_format {"type": "json_schema", "json_schema": {"name",
  // "schema", ...}}, or {"type": "object"} for json_object.
  std::shared_ptr<const JsonSchema> json_schema;
  // chat: `tools` as sent ([{"type": "function", "function": {"name", "description",
  // "parameters"}}], each checked) and each function's compiled `parameters` (absent: any object).
  OrderedJson tools = OrderedJson::array();
  std::vector<std::shared_ptr<const JsonSchema>> tool_parameters;
  ToolChoice tool_choice = ToolChoice::kAuto;  // kNone when there are no tools
  std::string tool_name;                       // kFunction: the function that must be called
  bool parallel_tool_calls = true;             // more than one call per answer
};

struct RequestLimits {
  std::string model_name;   // the served model's id; another non-empty `model` is a 404
  int64_t ctx_size = 4096;  // max_tokens beyond it is an error
};

inline constexpr size_t kMaxStops = 16;
inline constexpr int64_t kMaxChoices = 128;    // OpenAI's limit on n
inline constexpr size_t kMaxLogitBias = 1024;  // logit_bias entries
inline constexpr size_t kMaxTools = 128;       // OpenAI's limit on `tools`

// The body must be one JSON object of valid UTF-8 (nesting at most kMaxJsonDepth). Every field is
// read, accepted as without effect, or refused with a 400 naming it (see docs/server.md for the
// table; fields outside the OpenAI API are refused too). Never throws.
std::variant<ApiRequest, ApiError> ParseRequest(std::string_view body, Endpoint endpoint,
                                                const RequestLimits& limits);

// POST /tokenize and /detokenize, as llama.cpp's server has them. Fields other than those below
// are refused (400, `param` naming the field), and so is `"parse_special": false` (special tokens
// in the text are always recognized). Never throw.
struct TokenizeRequest {
  std::string content;       // required
  bool add_special = false;  // add BOS/EOS as tokenizer_config.json says
  bool with_pieces = false;  // answer [{"id", "piece"}] instead of ids
};
std::variant<TokenizeRequest, ApiError> ParseTokenizeRequest(std::string_view body);
struct DetokenizeRequest {
  std::vector<int32_t> tokens;  // required; ids >= 0 (the vocabulary is checked by the server)
};
std::variant<DetokenizeRequest, ApiError> ParseDetokenizeRequest(std::string_view body);

}  // namespace dsv3::server
