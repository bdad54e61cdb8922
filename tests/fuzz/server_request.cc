// The server's request parsing: arbitrary bytes as the body of /v1/chat/completions,
// /v1/completions, /tokenize and /detokenize. The parsers never throw; they give a request that
// respects the limits, or an OpenAI-shaped 4xx error that serializes.
#include <string_view>
#include <variant>
#include <vector>

#include "core/unicode.h"
#include "server/request.h"
#include "tests/fuzz/fuzz_target.h"

namespace {
void CheckError(const dsv3::server::ApiError& error) {
  dsv3::fuzz::Check(error.status >= 400 && error.status < 500, "error status not 4xx");
  dsv3::fuzz::Check(!error.message.empty(), "error without a message");
  dsv3::fuzz::Check(dsv3::FindInvalidUtf8(error.message) == std::string_view::npos,
                    "error message is not valid UTF-8");
  (void)error.ToJson().dump();
}
}  // namespace

DSV3_FUZZ_TARGET(server_request) {
  using namespace dsv3::server;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const auto tokenize = ParseTokenizeRequest(body);
  if (const auto* error = std::get_if<ApiError>(&tokenize)) CheckError(*error);
  const auto detokenize = ParseDetokenizeRequest(body);
  if (const auto* error = std::get_if<ApiError>(&detokenize)) {
    CheckError(*error);
  } else {
    for (const int32_t id : std::get<DetokenizeRequest>(detokenize).tokens)
      dsv3::fuzz::Check(id >= 0, "negative token id accepted");
  }
  RequestLimits limits;
  limits.model_name = "dsv3";
  limits.ctx_size = 256;
  for (const Endpoint endpoint : {Endpoint::kChat, Endpoint::kCompletion}) {
    const auto result = ParseRequest(body, endpoint, limits);
    if (const auto* error = std::get_if<ApiError>(&result)) {
      CheckError(*error);
      continue;
    }
    const ApiRequest& r = std::get<ApiRequest>(result);
    dsv3::fuzz::Check(r.endpoint == endpoint, "request for another endpoint");
    dsv3::fuzz::Check(!r.max_tokens || (*r.max_tokens >= 0 && *r.max_tokens <= limits.ctx_size),
                      "max_tokens beyond the context accepted");
    dsv3::fuzz::Check(r.stop.size() <= kMaxStops, "too many stop strings accepted");
    for (const std::string& s : r.stop) dsv3::fuzz::Check(!s.empty(), "empty stop string accepted");
    dsv3::fuzz::Check(r.sampling.temperature >= 0 && r.sampling.top_p > 0 && r.sampling.top_p <= 1,
                      "sampling parameters out of range accepted");
    if (endpoint == Endpoint::kChat) {
      dsv3::fuzz::Check(r.messages.is_array() && !r.messages.empty(), "chat without messages");
      dsv3::fuzz::Check(r.tools.size() == r.tool_parameters.size() && r.tools.size() <= kMaxTools,
                        "tools without their compiled parameters");
      if (r.tools.empty()) {
        dsv3::fuzz::Check(r.tool_choice == ToolChoice::kNone, "a tool choice without tools");
      }
      if (r.tool_choice == ToolChoice::kFunction) {
        bool found = false;
        for (const auto& t : r.tools) found |= t["function"]["name"] == r.tool_name;
        dsv3::fuzz::Check(found, "tool_choice names a function not in tools");
      }
      // The compiled schemas run: the body's own bytes fed to their recognizers.
      std::vector<const dsv3::JsonSchema*> schemas;
      if (r.json_schema) schemas.push_back(r.json_schema.get());
      for (const auto& p : r.tool_parameters) schemas.push_back(p.get());
      for (const dsv3::JsonSchema* schema : schemas) {
        dsv3::SchemaPrefix prefix(schema);
        for (const char c : body) {
          if (!prefix.Feed(static_cast<uint8_t>(c))) break;
          dsv3::fuzz::Check(prefix.ClosingBytes() >= 0, "negative closing bytes");
        }
      }
    }
  }
}
