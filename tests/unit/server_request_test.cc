// Request parsing for the OpenAI API (src/server/request.h): the fields it takes, and an
// OpenAI-shaped error with the right status, param and code for each kind of bad input; the
// <think> splitter of R1-style output, fed whole and in every split of its text.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/reasoning.h"
#include "server/request.h"

namespace dsv3::server {
namespace {

using ::testing::HasSubstr;

RequestLimits Limits() { return {"tiny", 64}; }

ApiRequest Ok(std::string_view body, Endpoint e = Endpoint::kChat) {
  auto r = ParseRequest(body, e, Limits());
  if (auto* err = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body << " -> " << err->ToJson().dump();
    return {};
  }
  return std::get<ApiRequest>(r);
}

ApiError Bad(std::string_view body, Endpoint e = Endpoint::kChat) {
  auto r = ParseRequest(body, e, Limits());
  if (!std::holds_alternative<ApiError>(r)) {
    ADD_FAILURE() << body << " was accepted";
    return {};
  }
  return std::get<ApiError>(r);
}

constexpr const char* kHello = R"("messages": [{"role": "user", "content": "Hello!"}])";

TEST(ServerRequest, ChatFields) {
  const ApiRequest r = Ok(std::string("{") + kHello + R"(, "model": "tiny", "max_tokens": 12,
      "temperature": 0, "top_p": 0.5, "top_k": 7, "seed": 42, "stop": ["a", "", "bc"],
      "stream": true, "stream_options": {"include_usage": true}, "n": 1, "user": "x"})");
  EXPECT_EQ(r.endpoint, Endpoint::kChat);
  EXPECT_EQ(r.messages, OrderedJson::parse(R"([{"role": "user", "content": "Hello!"}])"));
  EXPECT_EQ(r.max_tokens, 12);
  EXPECT_EQ(r.sampling.temperature, 0);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 7);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_TRUE(r.seeded);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(ServerRequest, Defaults) {
  const ApiRequest r = Ok(std::string("{") + kHello + "}");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.sampling.temperature, 1);  // OpenAI's default
  EXPECT_FALSE(r.seeded);
  EXPECT_FALSE(r.stream);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_TRUE(r.model.empty());
  // null is the same as absent; max_completion_tokens is max_tokens' newer name.
  const ApiRequest n = Ok(std::string("{") + kHello +
                          R"(, "temperature": null, "stop": "x", "max_completion_tokens": 5})");
  EXPECT_EQ(n.sampling.temperature, 1);
  EXPECT_EQ(n.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(n.max_tokens, 5);
}

TEST(ServerRequest, MessageShapes) {
  const ApiRequest r = Ok(R"({"messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]},
      {"role": "assistant", "content": null},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
       "function": {"name": "f", "arguments": "{\"x\": 1}"}}, {"function": {"name": "g"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "42"}]})");
  const OrderedJson want = OrderedJson::parse(R"([
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi you"},
      {"role": "assistant", "content": ""},
      {"role": "assistant", "content": null, "tool_calls": [
       {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
       {"id": "", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
      {"role": "tool", "content": "42", "tool_call_id": "call_1"}])");
  EXPECT_EQ(r.messages, want);
}

TEST(ServerRequest, CompletionPrompt) {
  EXPECT_EQ(Ok(R"({"prompt": "Once"})", Endpoint::kCompletion).prompt, "Once");
  EXPECT_EQ(Ok(R"({"prompt": ["Once"]})", Endpoint::kCompletion).prompt, "Once");
  const ApiError e = Bad(R"({"prompt": [1, 2]})", Endpoint::kCompletion);
  EXPECT_EQ(e.param, "prompt");
  EXPECT_EQ(e.code, "invalid_type");
  EXPECT_EQ(Bad(R"({"messages": []})", Endpoint::kCompletion).code, "missing_required_parameter");
}

struct BadCase {
  std::string body;
  int status;
  std::string param, code, message;
};

TEST(ServerRequest, EachBadInputIsAnOpenAiError) {
  const std::string h = std::string(kHello) + ", ";
  const std::vector<BadCase> cases = {
      {"", 400, "", "invalid_json", "invalid JSON"},
      {"{\"messages\": [", 400, "", "invalid_json", "invalid JSON"},
      {"[1, 2]", 400, "", "invalid_json", "JSON object"},
      {"{\"messages\": \"hi\xFF\"}", 400, "", "invalid_encoding", "byte offset 16"},
      {"{\"messages\": \"\xC0\xAF\"}", 400, "", "invalid_encoding", "UTF-8"},
      {R"({"messages": "\ud800"})", 400, "", "invalid_json", "invalid JSON"},
      {std::string(100, '[') + std::string(100, ']'), 400, "", "invalid_json", "deep"},
      {"{}", 400, "messages", "missing_required_parameter", "required"},
      {R"({"messages": []})", 400, "messages", "empty_array", "empty"},
      {R"({"messages": {}})", 400, "messages", "invalid_type", "an object"},
      {R"({"messages": [1]})", 400, "messages[0]", "invalid_type", "an integer"},
      {R"({"messages": [{"content": "x"}]})", 400, "messages[0].role", "missing", "required"},
      {R"({"messages": [{"role": "bot", "content": "x"}]})", 400, "messages[0].role",
       "invalid_value", "'bot'"},
      {R"({"messages": [{"role": "user"}]})", 400, "messages[0].content", "missing", "required"},
      {R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content",
       "invalid_type", "an integer"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400,
       "messages[0].content[0].type", "invalid_value", "only \"text\""},
      {"{" + h + R"("model": "gpt-4"})", 404, "model", "model_not_found", "'gpt-4'"},
      {"{" + h + R"("model": 3})", 400, "model", "invalid_type", "a string"},
      {"{" + h + R"("max_tokens": "12"})", 400, "max_tokens", "invalid_type", "a string"},
      {"{" + h + R"("max_tokens": 1.5})", 400, "max_tokens", "invalid_type", "a number"},
      {"{" + h + R"("max_tokens": 0})", 400, "max_tokens", "invalid_value", "between 1"},
      {"{" + h + R"("max_tokens": 65})", 400, "max_tokens", "invalid_value", "context holds 64"},
      {"{" + h + R"("max_completion_tokens": 18446744073709551615})", 400, "max_completion_tokens",
       "invalid_value", "at most"},
      {"{" + h + R"("temperature": "hot"})", 400, "temperature", "invalid_type", "a number"},
      {"{" + h + R"("temperature": 2.5})", 400, "temperature", "invalid_value", "between 0 and 2"},
      {"{" + h + R"("top_p": 0})", 400, "top_p", "invalid_value", "(0, 1]"},
      {"{" + h + R"("top_k": -1})", 400, "top_k", "invalid_value", "between 0"},
      {"{" + h + R"("seed": 1.5})", 400, "seed", "invalid_type", "an integer"},
      {"{" + h + R"("stop": 5})", 400, "stop", "invalid_type", "a string or an array"},
      {"{" + h + R"("stop": ["a", 1]})", 400, "stop[1]", "invalid_type", "a string"},
      {"{" + h + R"("stream": "yes"})", 400, "stream", "invalid_type", "a boolean"},
      {"{" + h + R"("stream_options": {"include_usage": 1}})", 400, "stream_options.include_usage",
       "invalid_type", "a boolean"},
      {"{" + h + R"("n": 0})", 400, "n", "invalid_value", "between 1 and 128"},
      {"{" + h + R"("n": 129})", 400, "n", "invalid_value", "at most 128"},
      {"{" + h + R"("n": 1.5})", 400, "n", "invalid_type", "an integer"},
  };
  for (const BadCase& c : cases) {
    const ApiError e = Bad(c.body);
    EXPECT_EQ(e.status, c.status) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_EQ(e.code, c.code) << c.body;
    EXPECT_THAT(e.message, HasSubstr(c.message)) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error");
    // The OpenAI shape: {"error": {"message", "type", "param", "code"}}.
    const OrderedJson j = e.ToJson();
    ASSERT_TRUE(j.contains("error")) << j.dump();
    EXPECT_EQ(j["error"].size(), 4u);
    EXPECT_EQ(j["error"]["param"].is_null(), c.param.empty());
  }
  std::string many = "{" + h + R"("stop": [)";
  for (int i = 0; i < 17; ++i) many += std::string(i ? "," : "") + "\"s\"";
  EXPECT_THAT(Bad(many + "]}").message, HasSubstr("at most 16"));
}

TEST(ServerRequest, GarbageNeverThrows) {
  // Every prefix of a valid body, and single-byte corruptions of it, give a request or an error.
  const std::string body = std::string("{") + kHello +
                           R"(, "max_tokens": 12, "stop": ["x"], "stream": true, "seed": 1})";
  for (size_t n = 0; n <= body.size(); ++n) {
    ParseRequest(std::string_view(body).substr(0, n), Endpoint::kChat, Limits());
    std::string corrupt = body;
    if (n < body.size()) corrupt[n] = static_cast<char>(corrupt[n] ^ 0x5A);
    ParseRequest(corrupt, Endpoint::kCompletion, Limits());
  }
}

// Every field of the OpenAI chat and completions request APIs, each with a value that asks for
// its feature: implemented fields (and those that cannot change the output, like `user`) are
// accepted; every other one is a 400 whose `param` names it. Fields that are off at their default
// value are accepted at that value. Fields outside the API are refused too, as OpenAI does.
TEST(ServerRequest, EveryApiFieldIsImplementedOrRefused) {
  struct Field {
    const char* name;
    const char* value;  // asks for the feature
    const char* off;    // the value that leaves it off, or nullptr
    bool implemented;   // or without effect on the output
  };
  const std::vector<Field> common = {
      {"model", R"("tiny")", nullptr, true},
      {"max_tokens", "5", nullptr, true},
      {"temperature", "0.5", nullptr, true},
      {"top_p", "0.9", nullptr, true},
      {"seed", "7", nullptr, true},
      {"stop", R"(["x"])", nullptr, true},
      {"stream", "true", nullptr, true},
      {"stream_options", R"({"include_usage": true})", nullptr, true},
      {"n", "2", nullptr, true},
      {"user", R"("someone")", nullptr, true},
      {"frequency_penalty", "0.5", nullptr, true},
      {"presence_penalty", "0.5", nullptr, true},
      {"logit_bias", R"({"50256": -100})", nullptr, true},
  };
  const std::vector<Field> chat = {
      {"max_completion_tokens", "5", nullptr, true},
      {"metadata", R"({"k": "v"})", nullptr, true},
      {"service_tier", R"("auto")", nullptr, true},
      {"safety_identifier", R"("id")", nullptr, true},
      {"prompt_cache_key", R"("key")", nullptr, true},
      {"store", "true", "false", false},
      {"logprobs", "true", nullptr, true},
      {"top_logprobs", "2", nullptr, false},  // without logprobs: true
      {"response_format", R"({"type": "json_object"})", nullptr, true},
      {"tools", R"([{"type": "function", "function": {"name": "f"}}])", nullptr, true},
      {"tool_choice", R"("required")", R"("none")", false},  // without tools
      {"parallel_tool_calls", "false", nullptr, true},
      {"modalities", R"(["text", "audio"])", R"(["text"])", false},
      {"audio", R"({"voice": "alloy", "format": "mp3"})", nullptr, false},
      {"functions", R"([{"name": "f"}])", nullptr, false},
      {"function_call", R"("auto")", nullptr, false},
      {"prediction", R"({"type": "content", "content": "x"})", nullptr, false},
      {"reasoning_effort", R"("low")", nullptr, false},
      {"verbosity", R"("low")", nullptr, false},
      {"web_search_options", "{}", nullptr, false},
      {"no_such_field", "1", nullptr, false},
  };
  const std::vector<Field> completion = {
      {"logprobs", "2", nullptr, true},       {"echo", "true", "false", false},
      {"best_of", "2", "1", false},           {"suffix", R"("end")", R"("")", false},
      {"no_such_field", "1", nullptr, false},
  };
  for (const Endpoint e : {Endpoint::kChat, Endpoint::kCompletion}) {
    const std::string base = e == Endpoint::kChat ? kHello : R"("prompt": "Once")";
    std::vector<Field> fields = common;
    const std::vector<Field>& own = e == Endpoint::kChat ? chat : completion;
    fields.insert(fields.end(), own.begin(), own.end());
    for (const Field& f : fields) {
      const std::string body = "{" + base + ", \"" + f.name + "\": " + f.value + "}";
      auto r = ParseRequest(body, e, Limits());
      if (f.implemented) {
        EXPECT_TRUE(std::holds_alternative<ApiRequest>(r)) << body;
        continue;
      }
      ASSERT_TRUE(std::holds_alternative<ApiError>(r)) << body << " was accepted";
      EXPECT_EQ(std::get<ApiError>(r).status, 400) << body;
      EXPECT_EQ(std::get<ApiError>(r).param, f.name) << body;
      if (f.off != nullptr) {
        const std::string off = "{" + base + ", \"" + f.name + "\": " + f.off + "}";
        EXPECT_TRUE(std::holds_alternative<ApiRequest>(ParseRequest(off, e, Limits()))) << off;
      }
      const std::string null = "{" + base + ", \"" + f.name + "\": null}";
      EXPECT_TRUE(std::holds_alternative<ApiRequest>(ParseRequest(null, e, Limits()))) << null;
    }
  }
}

TEST(ServerRequest, PenaltiesAndLogitBias) {
  const ApiRequest r = Ok(std::string("{") + kHello +
                          R"(, "frequency_penalty": 0.5, "presence_penalty": -1,
                              "logit_bias": {"7": 100, "0": -2.5}})");
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, -1.0f);
  ASSERT_EQ(r.sampling.logit_bias.size(), 2u);
  EXPECT_EQ(r.sampling.logit_bias[0], (std::pair<int32_t, float>{7, 100.0f}));
  EXPECT_EQ(r.sampling.logit_bias[1], (std::pair<int32_t, float>{0, -2.5f}));
  for (const char* bad :
       {R"("frequency_penalty": 2.5)", R"("presence_penalty": "1")", R"("logit_bias": {"x": 1})",
        R"("logit_bias": {"-1": 1})", R"("logit_bias": {"99999999999": 1})",
        R"("logit_bias": {"3": 101})", R"("logit_bias": {"3": "1"})", R"("logit_bias": [1])"}) {
    const ApiError e = Bad(std::string("{") + kHello + ", " + bad + "}");
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_EQ(e.param, std::string(bad).substr(1, std::string(bad).find('"', 1) - 1)) << bad;
  }
}

// POST /tokenize and /detokenize: their fields, defaults, and a 400 naming the field for each
// bad input, including fields they do not take.
TEST(ServerRequest, TokenizeAndDetokenizeBodies) {
  auto tok = ParseTokenizeRequest(R"({"content": "Hi there"})");
  ASSERT_TRUE(std::holds_alternative<TokenizeRequest>(tok));
  EXPECT_EQ(std::get<TokenizeRequest>(tok).content, "Hi there");
  EXPECT_FALSE(std::get<TokenizeRequest>(tok).add_special);
  EXPECT_FALSE(std::get<TokenizeRequest>(tok).with_pieces);
  tok = ParseTokenizeRequest(
      R"({"content": "x", "add_special": true, "with_pieces": true, "parse_special": true})");
  ASSERT_TRUE(std::holds_alternative<TokenizeRequest>(tok));
  EXPECT_TRUE(std::get<TokenizeRequest>(tok).add_special);
  EXPECT_TRUE(std::get<TokenizeRequest>(tok).with_pieces);

  auto detok = ParseDetokenizeRequest(R"({"tokens": [0, 19923, 2058]})");
  ASSERT_TRUE(std::holds_alternative<DetokenizeRequest>(detok));
  EXPECT_EQ(std::get<DetokenizeRequest>(detok).tokens, (std::vector<int32_t>{0, 19923, 2058}));

  struct Case {
    std::string body, param, code;
    bool detokenize;
  };
  const std::vector<Case> cases = {
      {R"({})", "content", "missing_required_parameter", false},
      {R"({"content": 5})", "content", "invalid_type", false},
      {R"({"content": "x", "add_special": "yes"})", "add_special", "invalid_type", false},
      {R"({"content": "x", "parse_special": false})", "parse_special", "unsupported_value", false},
      {R"({"content": "x", "n_probs": 2})", "n_probs", "unsupported_parameter", false},
      {R"(["content"])", "", "invalid_json", false},
      {"{\"content\": \"a\xFF\"}", "", "invalid_encoding", false},
      {R"({})", "tokens", "missing_required_parameter", true},
      {R"({"tokens": "1 2"})", "tokens", "invalid_type", true},
      {R"({"tokens": [1, -2]})", "tokens[1]", "invalid_value", true},
      {R"({"tokens": [1, 2.5]})", "tokens[1]", "invalid_type", true},
      {R"({"tokens": [1, 4294967296]})", "tokens[1]", "invalid_value", true},
      {R"({"tokens": [1], "with_pieces": true})", "with_pieces", "unsupported_parameter", true},
  };
  for (const Case& c : cases) {
    ApiError e;
    if (c.detokenize) {
      auto r = ParseDetokenizeRequest(c.body);
      ASSERT_TRUE(std::holds_alternative<ApiError>(r)) << c.body;
      e = std::get<ApiError>(r);
    } else {
      auto r = ParseTokenizeRequest(c.body);
      ASSERT_TRUE(std::holds_alternative<ApiError>(r)) << c.body;
      e = std::get<ApiError>(r);
    }
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_EQ(e.code, c.code) << c.body << " -> " << e.message;
  }
}

ReasoningSplitter::Parts SplitAll(bool in_reasoning, std::string_view text, size_t step) {
  ReasoningSplitter s(in_reasoning);
  ReasoningSplitter::Parts all;
  for (size_t i = 0; i < text.size(); i += step) {
    const ReasoningSplitter::Parts p = s.Push(text.substr(i, step));
    all.reasoning += p.reasoning;
    all.content += p.content;
  }
  const ReasoningSplitter::Parts p = s.Finish();
  all.reasoning += p.reasoning;
  all.content += p.content;
  return all;
}

TEST(ServerRequest, ReasoningSplitsAtThinkTags) {
  struct Case {
    bool in_reasoning;
    std::string text, reasoning, content;
  };
  const std::vector<Case> cases = {
      {true, "Let me see.</think>\n\nIt is 4.", "Let me see.", "It is 4."},
      {true, "still thinking </thi", "still thinking </thi", ""},
      {true, "a</think>", "a", ""},
      {false, "<think>\nhm</think>ok", "\nhm", "ok"},
      {false, "  <think>x</think> y", "x", "y"},
      {false, "plain answer <think> not a tag", "", "plain answer <think> not a tag"},
      {false, " <thin", "", " <thin"},
      {false, "", "", ""},
  };
  for (const Case& c : cases) {
    for (size_t step = 1; step <= c.text.size() + 1; ++step) {
      const ReasoningSplitter::Parts p = SplitAll(c.in_reasoning, c.text, step);
      EXPECT_EQ(p.reasoning, c.reasoning) << c.text << " step " << step;
      EXPECT_EQ(p.content, c.content) << c.text << " step " << step;
    }
  }
  EXPECT_TRUE(OpensThink("<｜User｜>hi<｜Assistant｜><think>\n"));
  EXPECT_FALSE(OpensThink("<｜User｜>hi<｜Assistant｜>"));
}

}  // namespace
}  // namespace dsv3::server

namespace dsv3::server {
namespace {
// logprobs / top_logprobs (chat) and logprobs (completions): what Sample() is asked to report.
TEST(ParseRequest, Logprobs) {
  auto parse = [](const std::string& fields, Endpoint e) {
    const std::string base = e == Endpoint::kChat
                                 ? R"({"messages": [{"role": "user", "content": "hi"}])"
                                 : R"({"prompt": "hi")";
    return ParseRequest(base + fields + "}", e, RequestLimits{"", 4096});
  };
  auto n = [&](const std::string& fields, Endpoint e) {
    auto r = parse(fields, e);
    EXPECT_TRUE(std::holds_alternative<ApiRequest>(r)) << fields;
    return std::holds_alternative<ApiRequest>(r) ? std::get<ApiRequest>(r).sampling.logprobs : -9;
  };
  auto param = [&](const std::string& fields, Endpoint e) {
    auto r = parse(fields, e);
    EXPECT_TRUE(std::holds_alternative<ApiError>(r)) << fields;
    return std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r).param : "";
  };
  EXPECT_EQ(n("", Endpoint::kChat), -1);
  EXPECT_EQ(n(R"(, "logprobs": false)", Endpoint::kChat), -1);
  EXPECT_EQ(n(R"(, "logprobs": true)", Endpoint::kChat), 0);
  EXPECT_EQ(n(R"(, "logprobs": true, "top_logprobs": 20)", Endpoint::kChat), 20);
  EXPECT_EQ(n(R"(, "logprobs": null, "top_logprobs": null)", Endpoint::kChat), -1);
  EXPECT_EQ(param(R"(, "top_logprobs": 2)", Endpoint::kChat), "top_logprobs");
  EXPECT_EQ(param(R"(, "logprobs": false, "top_logprobs": 2)", Endpoint::kChat), "top_logprobs");
  EXPECT_EQ(param(R"(, "logprobs": true, "top_logprobs": 21)", Endpoint::kChat), "top_logprobs");
  EXPECT_EQ(param(R"(, "logprobs": 2)", Endpoint::kChat), "logprobs");
  EXPECT_EQ(n("", Endpoint::kCompletion), -1);
  EXPECT_EQ(n(R"(, "logprobs": 0)", Endpoint::kCompletion), 0);
  EXPECT_EQ(n(R"(, "logprobs": 5)", Endpoint::kCompletion), 5);
  EXPECT_EQ(param(R"(, "logprobs": 6)", Endpoint::kCompletion), "logprobs");
  EXPECT_EQ(param(R"(, "logprobs": true)", Endpoint::kCompletion), "logprobs");
  EXPECT_EQ(param(R"(, "top_logprobs": 2)", Endpoint::kCompletion), "top_logprobs");
}
}  // namespace
}  // namespace dsv3::server

namespace dsv3::server {
namespace {
TEST(ParseRequest, ResponseFormat) {
  const std::string base =
      R"({"messages": [{"role": "user", "content": "hi"}], "response_format": )";
  auto parse = [&](const std::string& rf) {
    return ParseRequest(base + rf + "}", Endpoint::kChat, RequestLimits{"", 4096});
  };
  for (const auto& [rf, json] : std::vector<std::pair<std::string, bool>>{
           {R"({"type": "text"})", false}, {R"({"type": "json_object"})", true}, {"null", false}}) {
    auto r = parse(rf);
    ASSERT_TRUE(std::holds_alternative<ApiRequest>(r)) << rf;
    EXPECT_EQ(std::get<ApiRequest>(r).json_object, json) << rf;
  }
  const struct {
    const char* rf;
    const char* param;
    const char* code;
  } bad[] = {
      {R"({"type": "json_schema"})", "response_format.json_schema", "missing_required_parameter"},
      {R"({"type": "json_schema", "json_schema": {"schema": {}}})",
       "response_format.json_schema.name", "missing_required_parameter"},
      {R"({"type": "json_schema", "json_schema": {"name": "a b"}})",
       "response_format.json_schema.name", "invalid_value"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "extra": 1}})",
       "response_format.json_schema.extra", "unknown_parameter"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "schema": []}})",
       "response_format.json_schema.schema", "invalid_type"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
          "properties": {"a": {"type": "string", "minLength": 2}}}}})",
       "response_format.json_schema.schema.properties.a.minLength", "invalid_schema"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "schema": {"anyOf": []}}})",
       "response_format.json_schema.schema.anyOf", "invalid_schema"},
      {R"({"type": "xml"})", "response_format", "invalid_value"},
      {R"({})", "response_format", "invalid_value"},
      {R"("json_object")", "response_format", "invalid_type"},
      {R"({"type": "json_object", "strict": true})", "response_format.strict", "invalid_value"},
      {R"({"type": "json_object", "json_schema": {}})", "response_format.json_schema",
       "invalid_value"},
  };
  for (const auto& b : bad) {
    auto r = parse(b.rf);
    ASSERT_TRUE(std::holds_alternative<ApiError>(r)) << b.rf;
    EXPECT_EQ(std::get<ApiError>(r).param, b.param) << b.rf;
    EXPECT_EQ(std::get<ApiError>(r).code, b.code) << b.rf;
  }
  auto ok = parse(R"({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
      "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}})");
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(ok));
  const ApiRequest& r = std::get<ApiRequest>(ok);
  ASSERT_NE(r.json_schema, nullptr);
  EXPECT_FALSE(r.json_object);
  EXPECT_TRUE(ValidatesJsonSchema(*r.json_schema, Json::parse(R"({"a": 1})")));
  EXPECT_FALSE(ValidatesJsonSchema(*r.json_schema, Json::parse(R"({"a": "1"})")));
}

TEST(ParseRequest, Tools) {
  const std::string base = R"({"messages": [{"role": "user", "content": "hi"}], )";
  auto parse = [&](const std::string& rest) {
    return ParseRequest(base + rest + "}", Endpoint::kChat, RequestLimits{"", 4096});
  };
  const std::string tools = R"("tools": [
      {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
       "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                      "required": ["city"]}, "strict": true}},
      {"type": "function", "function": {"name": "noop"}}])";
  auto r = parse(tools);
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(r));
  const ApiRequest& a = std::get<ApiRequest>(r);
  ASSERT_EQ(a.tools.size(), 2u);
  ASSERT_EQ(a.tool_parameters.size(), 2u);
  EXPECT_EQ(a.tools[1]["function"]["name"], "noop");
  EXPECT_EQ(a.tool_choice, ToolChoice::kAuto);
  EXPECT_TRUE(a.parallel_tool_calls);
  EXPECT_TRUE(ValidatesJsonSchema(*a.tool_parameters[0], Json::parse(R"({"city": "x"})")));
  EXPECT_FALSE(ValidatesJsonSchema(*a.tool_parameters[0], Json::parse(R"({})")));
  EXPECT_TRUE(ValidatesJsonSchema(*a.tool_parameters[1], Json::parse(R"({"any": [1]})")));
  const struct {
    std::string rest;
    ToolChoice choice;
    std::string name;
    bool parallel;
  } good[] = {
      {tools + R"(, "tool_choice": "none")", ToolChoice::kNone, "", true},
      {tools + R"(, "tool_choice": "required", "parallel_tool_calls": false)",
       ToolChoice::kRequired, "", false},
      {tools + R"(, "tool_choice": {"type": "function", "function": {"name": "noop"}})",
       ToolChoice::kFunction, "noop", true},
      {R"("tool_choice": "auto")", ToolChoice::kNone, "", true},
      {R"("tools": [], "tool_choice": "none")", ToolChoice::kNone, "", true},
  };
  for (const auto& g : good) {
    auto p = parse(g.rest);
    ASSERT_TRUE(std::holds_alternative<ApiRequest>(p)) << g.rest;
    EXPECT_EQ(std::get<ApiRequest>(p).tool_choice, g.choice) << g.rest;
    EXPECT_EQ(std::get<ApiRequest>(p).tool_name, g.name) << g.rest;
    EXPECT_EQ(std::get<ApiRequest>(p).parallel_tool_calls, g.parallel) << g.rest;
  }
  const struct {
    std::string rest;
    const char* param;
  } bad[] = {
      {R"("tools": {})", "tools"},
      {R"("tools": [{"type": "retrieval"}])", "tools[0].type"},
      {R"("tools": [{"type": "function"}])", "tools[0].function"},
      {R"("tools": [{"type": "function", "function": {}}])", "tools[0].function.name"},
      {R"("tools": [{"type": "function", "function": {"name": "a.b"}}])", "tools[0].function.name"},
      {R"("tools": [{"type": "function", "function": {"name": "f", "x": 1}}])",
       "tools[0].function.x"},
      {R"("tools": [{"type": "function", "function": {"name": "f"}},
                    {"type": "function", "function": {"name": "f"}}])",
       "tools[1].function.name"},
      {R"("tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}])",
       "tools[0].function.parameters.type"},
      {R"("tools": [{"type": "function", "function": {"name": "f", "parameters":
          {"type": "object", "properties": {"a": {"format": "date"}}}}}])",
       "tools[0].function.parameters.properties.a.format"},
      {tools + R"(, "tool_choice": "sometimes")", "tool_choice"},
      {tools + R"(, "tool_choice": {"type": "function", "function": {"name": "other"}})",
       "tool_choice.function.name"},
      {R"("tool_choice": "required")", "tool_choice"},
      {tools + R"(, "parallel_tool_calls": 1)", "parallel_tool_calls"},
      {tools + R"(, "response_format": {"type": "json_object"})", "response_format"},
  };
  for (const auto& b : bad) {
    auto p = parse(b.rest);
    ASSERT_TRUE(std::holds_alternative<ApiError>(p)) << b.rest;
    EXPECT_EQ(std::get<ApiError>(p).param, b.param) << b.rest;
    EXPECT_EQ(std::get<ApiError>(p).status, 400) << b.rest;
  }
}
}  // namespace
}  // namespace dsv3::server
