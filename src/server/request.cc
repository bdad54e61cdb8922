#include "server/request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/unicode.h"

namespace dsv3::server {
namespace {

// Thrown inside the parser, caught at its top.
struct Rejected {
  ApiError error;
};

[[noreturn]] void Reject(const std::string& param, const std::string& message,
                         const std::string& code = "invalid_value", int status = 400) {
  throw Rejected{ApiError{status, message, "invalid_request_error", param, code}};
}

std::string TypeName(const OrderedJson& j) {
  if (j.is_string()) return "a string";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  if (j.is_object()) return "an object";
  if (j.is_array()) return "an array";
  return "null";
}

[[noreturn]] void WrongType(const std::string& param, const OrderedJson& j, const char* want) {
  Reject(param, fmt::format("'{}': expected {}, got {}", param, want, TypeName(j)), "invalid_type");
}

// The field, or null when it is absent or null (OpenAI treats both as "not given").
const OrderedJson* Field(const OrderedJson& body, const char* key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

int64_t Integer(const OrderedJson& j, const std::string& param, int64_t lo, int64_t hi) {
  if (!j.is_number_integer()) WrongType(param, j, "an integer");
  if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    Reject(param, fmt::format("'{}' must be at most {}, got {}", param, hi, j.dump()));
  }
  const int64_t v = j.get<int64_t>();
  if (v < lo || v > hi) {
    Reject(param, fmt::format("'{}' must be between {} and {}, got {}", param, lo, hi, v));
  }
  return v;
}

double Number(const OrderedJson& j, const std::string& param) {
  if (!j.is_number()) WrongType(param, j, "a number");
  const double v = j.get<double>();
  if (!std::isfinite(v)) Reject(param, fmt::format("'{}' must be finite", param));
  return v;
}

std::string String(const OrderedJson& j, const std::string& param) {
  if (!j.is_string()) WrongType(param, j, "a string");
  return j.get<std::string>();
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts (joined).
std::string Content(const OrderedJson& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) WrongType(param, content, "a string or an array of text parts");
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const std::string p = fmt::format("{}[{}]", param, i);
    const OrderedJson& part = content[i];
    if (!part.is_object()) WrongType(p, part, "an object");
    const OrderedJson* type = Field(part, "type");
    if (type == nullptr || !type->is_string() || *type != "text") {
      Reject(p + ".type", fmt::format("'{}.type': only \"text\" parts are supported", p));
    }
    const OrderedJson* t = Field(part, "text");
    if (t == nullptr) Reject(p + ".text", fmt::format("'{}.text' is missing", p), "missing");
    text += String(*t, p + ".text");
  }
  return text;
}

// An assistant message's tool_calls, as the chat templates read them: [{"id", "type":
// "function", "function": {"name", "arguments"}}], the arguments a string (of JSON).
OrderedJson ToolCalls(const OrderedJson& calls, const std::string& param) {
  OrderedJson out = OrderedJson::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string p = fmt::format("{}[{}]", param, i);
    const OrderedJson& call = calls[i];
    if (!call.is_object()) WrongType(p, call, "an object");
    const OrderedJson* type = Field(call, "type");
    if (type != nullptr && *type != "function") {
      Reject(p + ".type", fmt::format("'{}.type' must be \"function\"", p));
    }
    const OrderedJson* f = Field(call, "function");
    if (f == nullptr) {
      Reject(p + ".function", fmt::format("'{}.function' is required", p), "missing");
    }
    if (!f->is_object()) WrongType(p + ".function", *f, "an object");
    const OrderedJson* name = Field(*f, "name");
    if (name == nullptr) {
      Reject(p + ".function.name", fmt::format("'{}.function.name' is required", p), "missing");
    }
    const OrderedJson* args = Field(*f, "arguments");
    OrderedJson c = {{"id", ""}, {"type", "function"}};
    if (const OrderedJson* id = Field(call, "id")) c["id"] = String(*id, p + ".id");
    c["function"] = {{"name", String(*name, p + ".function.name")},
                     {"arguments", args ? String(*args, p + ".function.arguments") : "{}"}};
    out.push_back(std::move(c));
  }
  return out;
}

OrderedJson Messages(const OrderedJson& body) {
  const OrderedJson* messages = Field(body, "messages");
  if (messages == nullptr) {
    Reject("messages", "'messages' is required", "missing_required_parameter");
  }
  if (!messages->is_array()) WrongType("messages", *messages, "an array of messages");
  if (messages->empty()) Reject("messages", "'messages' must not be empty", "empty_array");
  OrderedJson out = OrderedJson::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const std::string p = fmt::format("messages[{}]", i);
    const OrderedJson& m = (*messages)[i];
    if (!m.is_object()) WrongType(p, m, "an object");
    const OrderedJson* role = Field(m, "role");
    if (role == nullptr) Reject(p + ".role", fmt::format("'{}.role' is required", p), "missing");
    std::string r = String(*role, p + ".role");
    if (r == "developer") r = "system";
    if (r != "system" && r != "user" && r != "assistant" && r != "tool") {
      Reject(p + ".role",
             fmt::format("'{}.role' must be system, developer, user, assistant or tool, got '{}'",
                         p, r));
    }
    OrderedJson msg = {{"role", r}};
    const OrderedJson* content = Field(m, "content");
    const OrderedJson* tool_calls = Field(m, "tool_calls");
    if (r == "assistant" && tool_calls != nullptr) {
      if (!tool_calls->is_array()) WrongType(p + ".tool_calls", *tool_calls, "an array");
      // The chat templates expect content none beside tool calls.
      msg["content"] = content ? OrderedJson(Content(*content, p + ".content")) : OrderedJson();
      msg["tool_calls"] = ToolCalls(*tool_calls, p + ".tool_calls");
    } else {
      if (content == nullptr && r != "assistant") {
        Reject(p + ".content", fmt::format("'{}.content' is required", p), "missing");
      }
      msg["content"] = content ? Content(*content, p + ".content") : "";
    }
    if (r == "tool") {
      if (const OrderedJson* id = Field(m, "tool_call_id")) {
        msg["tool_call_id"] = String(*id, p + ".tool_call_id");
      }
    }
    if (const OrderedJson* name = Field(m, "name")) msg["name"] = String(*name, p + ".name");
    out.push_back(std::move(msg));
  }
  return out;
}

std::string Prompt(const OrderedJson& body) {
  const OrderedJson* prompt = Field(body, "prompt");
  if (prompt == nullptr) Reject("prompt", "'prompt' is required", "missing_required_parameter");
  if (prompt->is_string()) return prompt->get<std::string>();
  if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    return (*prompt)[0].get<std::string>();
  }
  WrongType("prompt", *prompt, "a string (or an array of one string)");
}

std::vector<std::string> Stops(const OrderedJson& body) {
  const OrderedJson* stop = Field(body, "stop");
  std::vector<std::string> out;
  if (stop == nullptr) return out;
  if (stop->is_string()) {
    out.push_back(stop->get<std::string>());
  } else if (stop->is_array()) {
    if (stop->size() > kMaxStops) {
      Reject("stop", fmt::format("'stop' may hold at most {} strings", kMaxStops));
    }
    for (size_t i = 0; i < stop->size(); ++i) {
      out.push_back(String((*stop)[i], fmt::format("stop[{}]", i)));
    }
  } else {
    WrongType("stop", *stop, "a string or an array of strings");
  }
  std::erase(out, std::string());
  return out;
}

// logit_bias: {"token id": bias in [-100, 100]}, at most kMaxLogitBias entries; ids are checked
// against the vocabulary by the server.
std::vector<std::pair<int32_t, float>> LogitBias(const OrderedJson& j) {
  std::vector<std::pair<int32_t, float>> out;
  const OrderedJson* bias = Field(j, "logit_bias");
  if (bias == nullptr) return out;
  if (!bias->is_object()) WrongType("logit_bias", *bias, "an object of token id -> bias");
  if (bias->size() > kMaxLogitBias) {
    Reject("logit_bias", fmt::format("'logit_bias' has {} entries; at most {} are allowed",
                                     bias->size(), kMaxLogitBias));
  }
  for (const auto& [key, value] : bias->items()) {
    int64_t id = -1;
    if (!key.empty() && key.size() <= 10 &&
        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      id = std::stoll(key);
    }
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      Reject("logit_bias", fmt::format("'logit_bias' keys must be token ids, got '{}'", key));
    }
    const double b = Number(value, "logit_bias");
    if (b < -100 || b > 100)
      Reject("logit_bias", "'logit_bias' values must be between -100 and 100");
    out.emplace_back(static_cast<int32_t>(id), static_cast<float>(b));
  }
  return out;
}

// The body as one JSON object of valid UTF-8.
OrderedJson ParseBody(std::string_view body) {
  if (const size_t bad = FindInvalidUtf8(body); bad != std::string_view::npos) {
    Reject("", fmt::format("the request body is not valid UTF-8 (byte offset {})", bad),
           "invalid_encoding");
  }
  OrderedJson j;
  try {
    j = ParseOrderedJson(body, "request body");
  } catch (const std::exception& e) {
    // The parser quotes the bytes it stopped at, which may end inside a UTF-8 sequence.
    std::string message;
    AppendUtf8Lossy(e.what(), &message, /*final=*/true);
    Reject("", message, "invalid_json");
  }
  if (!j.is_object()) {
    Reject("", fmt::format("the request body must be a JSON object, got {}", TypeName(j)),
           "invalid_json");
  }
  return j;
}

// Refuses every field of `j` not in `known`.
void OnlyFields(const OrderedJson& j, std::initializer_list<std::string_view> known) {
  for (const auto& [key, value] : j.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      Reject(key, fmt::format("'{}' is not supported by this endpoint", key),
             "unsupported_parameter");
    }
  }
}

bool Boolean(const OrderedJson& j, const char* key, bool fallback) {
  const OrderedJson* v = Field(j, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) WrongType(key, *v, "a boolean");
  return v->get<bool>();
}

// What the parser does with each field of the OpenAI chat and completions APIs (and top_k):
// kParsed fields are read by Parse; kNoEffect ones are accepted and change nothing (identifiers
// and hints); kOnly ones are accepted only at the value that turns them off (`value`, JSON);
// kRefused ones always get a 400. A field in no list is refused as unknown.
enum class Use { kParsed, kNoEffect, kOnly, kRefused };
struct FieldRule {
  std::string_view name;
  Use use;
  std::string_view value = "";  // kOnly: the accepted value
};
constexpr FieldRule kCommonFields[] = {
    {"model", Use::kParsed},
    {"max_tokens", Use::kParsed},
    {"max_completion_tokens", Use::kParsed},
    {"temperature", Use::kParsed},
    {"top_p", Use::kParsed},
    {"top_k", Use::kParsed},
    {"seed", Use::kParsed},
    {"stop", Use::kParsed},
    {"stream", Use::kParsed},
    {"stream_options", Use::kParsed},
    {"n", Use::kParsed},
    {"user", Use::kNoEffect},
    {"safety_identifier", Use::kNoEffect},
    {"prompt_cache_key", Use::kNoEffect},
    {"service_tier", Use::kNoEffect},
    {"metadata", Use::kNoEffect},
    {"frequency_penalty", Use::kParsed},
    {"presence_penalty", Use::kParsed},
    {"logit_bias", Use::kParsed},
    {"store", Use::kOnly, "false"},
};
constexpr FieldRule kChatFields[] = {
    {"messages", Use::kParsed},
    {"logprobs", Use::kParsed},
    {"top_logprobs", Use::kParsed},
    {"response_format", Use::kParsed},
    {"tools", Use::kParsed},
    {"tool_choice", Use::kParsed},
    {"parallel_tool_calls", Use::kParsed},
    {"modalities", Use::kOnly, R"(["text"])"},
    {"functions", Use::kRefused},
    {"function_call", Use::kRefused},
    {"audio", Use::kRefused},
    {"prediction", Use::kRefused},
    {"reasoning_effort", Use::kRefused},
    {"verbosity", Use::kRefused},
    {"web_search_options", Use::kRefused},
};
constexpr FieldRule kCompletionFields[] = {
    {"prompt", Use::kParsed},         // required
    {"logprobs", Use::kParsed},       // an integer here: how many alternatives
    {"echo", Use::kOnly, "false"},    // the prompt is not repeated
    {"best_of", Use::kOnly, "1"},     // one candidate per choice
    {"suffix", Use::kOnly, R"("")"},  // no text after the insertion point
};

// A name of OpenAI's kind (functions, schemas): 1-64 of a-z, A-Z, 0-9, '_' and '-'.
std::string Name(const OrderedJson& j, const std::string& param) {
  const std::string name = String(j, param);
  const bool ok =
      !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-';
      });
  if (!ok) {
    Reject(param,
           fmt::format("'{}' must be 1-64 letters, digits, '_' or '-', got '{}'", param, name));
  }
  return name;
}

// `j`'s fields must all be in `known` (else a 400 naming `param`.field).
void KnownFields(const OrderedJson& j, const std::string& param,
                 std::initializer_list<std::string_view> known) {
  for (const auto& [key, value] : j.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      Reject(param + "." + key, fmt::format("'{}.{}' is not a supported field", param, key),
             "unknown_parameter");
    }
  }
}

// A JSON Schema compiled for constrained decoding; errors name `param` and the keyword's path.
std::shared_ptr<const JsonSchema> Schema(const OrderedJson& schema, const std::string& param) {
  std::variant<std::shared_ptr<const JsonSchema>, SchemaError> compiled =
      CompileJsonSchema(Json::parse(schema.dump()));
  if (const SchemaError* e = std::get_if<SchemaError>(&compiled)) {
    const std::string where = e->path.empty() ? param : param + "." + e->path;
    Reject(where, fmt::format("'{}': {}", where, e->message), "invalid_schema");
  }
  return std::get<std::shared_ptr<const JsonSchema>>(std::move(compiled));
}

// response_format: {"type": "text"} (the default), {"type": "json_object"}, or {"type":
// "json_schema", "json_schema": {"name", "description", "schema", "strict"}}.
void ResponseFormat(const OrderedJson& j, ApiRequest* r) {
  const OrderedJson* v = Field(j, "response_format");
  if (v == nullptr) return;
  if (!v->is_object()) WrongType("response_format", *v, "an object");
  const OrderedJson* t = Field(*v, "type");
  if (t == nullptr || !t->is_string()) {
    Reject("response_format",
           "'response_format' needs a 'type': \"text\", \"json_object\" or \"json_schema\"");
  }
  const std::string type = t->get<std::string>();
  if (type != "text" && type != "json_object" && type != "json_schema") {
    Reject("response_format",
           fmt::format("'response_format' type \"{}\": expected \"text\", \"json_object\" or "
                       "\"json_schema\"",
                       type));
  }
  for (const auto& [key, value] : v->items()) {
    if (key != "type" && !(key == "json_schema" && type == "json_schema")) {
      Reject("response_format." + key,
             fmt::format("'response_format.{}' is not a field of type \"{}\"", key, type));
    }
  }
  r->json_object = type == "json_object";
  if (r->json_object) r->json_schema = Schema({{"type", "object"}}, "response_format");
  if (type != "json_schema") return;
  const OrderedJson* js = Field(*v, "json_schema");
  if (js == nullptr) {
    Reject("response_format.json_schema", "'response_format.json_schema' is required",
           "missing_required_parameter");
  }
  if (!js->is_object()) WrongType("response_format.json_schema", *js, "an object");
  KnownFields(*js, "response_format.json_schema", {"name", "description", "schema", "strict"});
  const OrderedJson* name = Field(*js, "name");
  if (name == nullptr) {
    Reject("response_format.json_schema.name", "'response_format.json_schema.name' is required",
           "missing_required_parameter");
  }
  Name(*name, "response_format.json_schema.name");
  if (const OrderedJson* d = Field(*js, "description")) {
    String(*d, "response_format.json_schema.description");
  }
  if (const OrderedJson* s = Field(*js, "strict"); s && !s->is_boolean()) {
    WrongType("response_format.json_schema.strict", *s, "a boolean");
  }
  const OrderedJson* schema = Field(*js, "schema");
  if (schema && !schema->is_object()) {
    WrongType("response_format.json_schema.schema", *schema, "an object");
  }
  r->json_schema =
      Schema(schema ? *schema : OrderedJson::object(), "response_format.json_schema.schema");
}

// tools, tool_choice and parallel_tool_calls.
void Tools(const OrderedJson& j, ApiRequest* r) {
  if (const OrderedJson* tools = Field(j, "tools")) {
    if (!tools->is_array()) WrongType("tools", *tools, "an array of tools");
    if (tools->size() > kMaxTools) {
      Reject("tools", fmt::format("'tools' may hold at most {} functions", kMaxTools));
    }
    for (size_t i = 0; i < tools->size(); ++i) {
      const std::string p = fmt::format("tools[{}]", i);
      const OrderedJson& tool = (*tools)[i];
      if (!tool.is_object()) WrongType(p, tool, "an object");
      KnownFields(tool, p, {"type", "function"});
      const OrderedJson* type = Field(tool, "type");
      if (type == nullptr || *type != "function") {
        Reject(p + ".type", fmt::format("'{}.type' must be \"function\"", p));
      }
      const OrderedJson* f = Field(tool, "function");
      if (f == nullptr) {
        Reject(p + ".function", fmt::format("'{}.function' is required", p),
               "missing_required_parameter");
      }
      if (!f->is_object()) WrongType(p + ".function", *f, "an object");
      KnownFields(*f, p + ".function", {"name", "description", "parameters", "strict"});
      const OrderedJson* name = Field(*f, "name");
      if (name == nullptr) {
        Reject(p + ".function.name", fmt::format("'{}.function.name' is required", p),
               "missing_required_parameter");
      }
      const std::string n = Name(*name, p + ".function.name");
      for (const OrderedJson& other : r->tools) {
        if (other["function"]["name"] == n) {
          Reject(p + ".function.name", fmt::format("two tools are named '{}'", n));
        }
      }
      if (const OrderedJson* d = Field(*f, "description")) {
        String(*d, p + ".function.description");
      }
      if (const OrderedJson* s = Field(*f, "strict"); s && !s->is_boolean()) {
        WrongType(p + ".function.strict", *s, "a boolean");
      }
      const OrderedJson* params = Field(*f, "parameters");
      const std::string pp = p + ".function.parameters";
      if (params && !params->is_object()) WrongType(pp, *params, "an object (a JSON Schema)");
      if (params) {
        const OrderedJson* ptype = Field(*params, "type");
        if (ptype == nullptr || *ptype != "object") {
          Reject(pp + ".type", fmt::format("'{}.type' must be \"object\"", pp));
        }
      }
      r->tool_parameters.push_back(Schema(params ? *params : OrderedJson{{"type", "object"}}, pp));
      r->tools.push_back(tool);
    }
  }
  const bool any = !r->tools.empty();
  r->tool_choice = any ? ToolChoice::kAuto : ToolChoice::kNone;
  if (const OrderedJson* c = Field(j, "tool_choice")) {
    if (c->is_string()) {
      const std::string s = c->get<std::string>();
      if (s == "none") {
        r->tool_choice = ToolChoice::kNone;
      } else if (s == "auto") {
        r->tool_choice = any ? ToolChoice::kAuto : ToolChoice::kNone;
      } else if (s == "required") {
        r->tool_choice = ToolChoice::kRequired;
      } else {
        Reject("tool_choice", fmt::format("'tool_choice' must be \"none\", \"auto\", "
                                          "\"required\" or a function, got \"{}\"",
                                          s));
      }
    } else if (c->is_object()) {
      KnownFields(*c, "tool_choice", {"type", "function"});
      const OrderedJson* type = Field(*c, "type");
      if (type == nullptr || *type != "function") {
        Reject("tool_choice.type", "'tool_choice.type' must be \"function\"");
      }
      const OrderedJson* f = Field(*c, "function");
      if (f == nullptr || !f->is_object()) {
        Reject("tool_choice.function", "'tool_choice.function' must be {\"name\": ...}");
      }
      KnownFields(*f, "tool_choice.function", {"name"});
      const OrderedJson* name = Field(*f, "name");
      if (name == nullptr) {
        Reject("tool_choice.function.name", "'tool_choice.function.name' is required",
               "missing_required_parameter");
      }
      r->tool_name = String(*name, "tool_choice.function.name");
      r->tool_choice = ToolChoice::kFunction;
      const bool known = std::any_of(r->tools.begin(), r->tools.end(), [&](const OrderedJson& t) {
        return t["function"]["name"] == r->tool_name;
      });
      if (!known && any) {
        Reject("tool_choice.function.name",
               fmt::format("'tool_choice' names '{}', which is not in 'tools'", r->tool_name));
      }
    } else {
      WrongType("tool_choice", *c, "a string or an object");
    }
    if (!any && r->tool_choice != ToolChoice::kNone) {
      Reject("tool_choice", "'tool_choice' other than \"none\" needs 'tools'");
    }
  }
  r->parallel_tool_calls = Boolean(j, "parallel_tool_calls", true);
  if (any && (r->json_object || r->json_schema) && r->tool_choice != ToolChoice::kNone) {
    Reject("response_format",
           "'response_format' json_object or json_schema cannot be combined with 'tools' "
           "(unless 'tool_choice' is \"none\")",
           "unsupported_parameter");
  }
}

// -1: no log-probabilities; n >= 0: the chosen token's and n alternatives'. Chat: `logprobs`
// (boolean) and `top_logprobs` (0-20, needs logprobs); completions: `logprobs` (0-5).
int64_t Logprobs(const OrderedJson& j, Endpoint endpoint) {
  const OrderedJson* lp = Field(j, "logprobs");
  if (endpoint == Endpoint::kCompletion) return lp ? Integer(*lp, "logprobs", 0, 5) : -1;
  if (lp && !lp->is_boolean()) WrongType("logprobs", *lp, "a boolean");
  const bool on = lp && lp->get<bool>();
  const OrderedJson* top = Field(j, "top_logprobs");
  if (top == nullptr) return on ? 0 : -1;
  const int64_t n = Integer(*top, "top_logprobs", 0, kMaxTopLogprobs);
  if (!on) Reject("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  return n;
}

const FieldRule* FindRule(std::string_view name, Endpoint endpoint) {
  for (const FieldRule& f : kCommonFields) {
    if (f.name == name) return &f;
  }
  if (endpoint == Endpoint::kChat) {
    for (const FieldRule& f : kChatFields) {
      if (f.name == name) return &f;
    }
  } else {
    for (const FieldRule& f : kCompletionFields) {
      if (f.name == name) return &f;
    }
  }
  return nullptr;
}

// Every field of the body is parsed, has no effect, or is refused with a 400 naming it: none is
// silently dropped.
void CheckFields(const OrderedJson& j, Endpoint endpoint) {
  for (const auto& [key, value] : j.items()) {
    if (value.is_null()) continue;  // null counts as absent
    const FieldRule* rule = FindRule(key, endpoint);
    if (rule == nullptr) {
      Reject(key, fmt::format("unrecognized request field '{}'", key), "unknown_parameter");
    }
    if (rule->use == Use::kRefused) {
      Reject(key, fmt::format("'{}' is not supported by this server", key),
             "unsupported_parameter");
    }
    if (rule->use == Use::kOnly && value != OrderedJson::parse(rule->value)) {
      Reject(key,
             fmt::format("'{}' is not supported by this server; only {} (its default) is accepted",
                         key, rule->value),
             "unsupported_parameter");
    }
  }
}

ApiRequest Parse(std::string_view body, Endpoint endpoint, const RequestLimits& limits) {
  const OrderedJson j = ParseBody(body);
  ApiRequest r;
  r.endpoint = endpoint;
  if (const OrderedJson* model = Field(j, "model")) {
    r.model = String(*model, "model");
    if (!r.model.empty() && r.model != limits.model_name) {
      Reject("model",
             fmt::format("the model '{}' does not exist; this server serves '{}'", r.model,
                         limits.model_name),
             "model_not_found", 404);
    }
  }
  if (endpoint == Endpoint::kChat) {
    r.messages = Messages(j);
  } else {
    r.prompt = Prompt(j);
  }
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (const OrderedJson* v = Field(j, key)) {
      const int64_t n = Integer(*v, key, 1, std::numeric_limits<int64_t>::max());
      if (n > limits.ctx_size) {
        Reject(key,
               fmt::format("'{}' is {}, but the context holds {} tokens", key, n, limits.ctx_size));
      }
      r.max_tokens = r.max_tokens ? std::min(*r.max_tokens, n) : n;
    }
  }
  r.sampling.temperature = 1;
  if (const OrderedJson* v = Field(j, "temperature")) {
    const double t = Number(*v, "temperature");
    if (t < 0 || t > 2) Reject("temperature", "'temperature' must be between 0 and 2");
    r.sampling.temperature = static_cast<float>(t);
  }
  if (const OrderedJson* v = Field(j, "top_p")) {
    const double p = Number(*v, "top_p");
    if (!(p > 0 && p <= 1)) Reject("top_p", "'top_p' must be in (0, 1]");
    r.sampling.top_p = static_cast<float>(p);
  }
  if (const OrderedJson* v = Field(j, "top_k")) {
    r.sampling.top_k = Integer(*v, "top_k", 0, std::numeric_limits<int32_t>::max());
  }
  if (const OrderedJson* v = Field(j, "seed")) {
    if (!v->is_number_integer()) WrongType("seed", *v, "an integer");
    r.sampling.seed =
        v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
    r.seeded = true;
  }
  if (const OrderedJson* v = Field(j, "n")) r.n = Integer(*v, "n", 1, kMaxChoices);
  for (const char* key : {"frequency_penalty", "presence_penalty"}) {
    if (const OrderedJson* v = Field(j, key)) {
      const double p = Number(*v, key);
      if (p < -2 || p > 2) Reject(key, fmt::format("'{}' must be between -2 and 2", key));
      (key[0] == 'f' ? r.sampling.frequency_penalty : r.sampling.presence_penalty) =
          static_cast<float>(p);
    }
  }
  r.sampling.logit_bias = LogitBias(j);
  r.sampling.logprobs = Logprobs(j, endpoint);
  if (endpoint == Endpoint::kChat) {
    ResponseFormat(j, &r);
    Tools(j, &r);
  }
  r.stop = Stops(j);
  if (const OrderedJson* v = Field(j, "stream")) {
    if (!v->is_boolean()) WrongType("stream", *v, "a boolean");
    r.stream = v->get<bool>();
  }
  if (const OrderedJson* v = Field(j, "stream_options")) {
    if (!v->is_object()) WrongType("stream_options", *v, "an object");
    if (const OrderedJson* u = Field(*v, "include_usage")) {
      if (!u->is_boolean()) WrongType("stream_options.include_usage", *u, "a boolean");
      r.include_usage = u->get<bool>();
    }
  }
  CheckFields(j, endpoint);  // after the fields it reads, whose errors come first
  return r;
}

}  // namespace

OrderedJson ApiError::ToJson() const {
  OrderedJson e = {{"message", message}, {"type", type}};
  e["param"] = param.empty() ? OrderedJson() : OrderedJson(param);
  e["code"] = code.empty() ? OrderedJson() : OrderedJson(code);
  return {{"error", e}};
}

namespace {
// f(), or the error it was rejected with.
template <typename F>
auto Guarded(F&& f) -> std::variant<decltype(f()), ApiError> {
  try {
    return f();
  } catch (const Rejected& r) {
    return r.error;
  } catch (const std::exception& e) {  // e.g. std::bad_alloc
    return ApiError{500, e.what(), "server_error", "", ""};
  }
}
}  // namespace

std::variant<ApiRequest, ApiError> ParseRequest(std::string_view body, Endpoint endpoint,
                                                const RequestLimits& limits) {
  return Guarded([&] { return Parse(body, endpoint, limits); });
}

std::variant<TokenizeRequest, ApiError> ParseTokenizeRequest(std::string_view body) {
  return Guarded([&] {
    const OrderedJson j = ParseBody(body);
    OnlyFields(j, {"content", "add_special", "parse_special", "with_pieces"});
    TokenizeRequest r;
    const OrderedJson* content = Field(j, "content");
    if (content == nullptr)
      Reject("content", "'content' is required", "missing_required_parameter");
    r.content = String(*content, "content");
    r.add_special = Boolean(j, "add_special", false);
    if (!Boolean(j, "parse_special", true)) {
      Reject("parse_special",
             "'parse_special': false is not supported (special tokens in the text are always "
             "recognized)",
             "unsupported_value");
    }
    r.with_pieces = Boolean(j, "with_pieces", false);
    return r;
  });
}

std::variant<DetokenizeRequest, ApiError> ParseDetokenizeRequest(std::string_view body) {
  return Guarded([&] {
    const OrderedJson j = ParseBody(body);
    OnlyFields(j, {"tokens"});
    const OrderedJson* tokens = Field(j, "tokens");
    if (tokens == nullptr) Reject("tokens", "'tokens' is required", "missing_required_parameter");
    if (!tokens->is_array()) WrongType("tokens", *tokens, "an array of token ids");
    DetokenizeRequest r;
    r.tokens.reserve(tokens->size());
    for (size_t i = 0; i < tokens->size(); ++i) {
      const std::string param = fmt::format("tokens[{}]", i);
      r.tokens.push_back(static_cast<int32_t>(
          Integer((*tokens)[i], param, 0, std::numeric_limits<int32_t>::max())));
    }
    return r;
  });
}

}  // namespace dsv3::server
