#include "server/server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <optional>
#include <random>

#include "core/error.h"
#include "core/unicode.h"
#include "runtime/json_schema.h"
#include "server/reasoning.h"
#include "server/request.h"
#include "server/tools.h"
#include "tokenizer/chat_template.h"

namespace dsv3::server {
namespace {

using namespace std::chrono_literals;

constexpr auto kPoll = 100ms;  // how often a waiting handler checks its request

std::string Dump(const OrderedJson& j) {
  return j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

void SendJson(httplib::Response& res, int status, const OrderedJson& body) {
  res.status = status;
  res.set_content(Dump(body), "application/json");
}

void SendError(httplib::Response& res, const ApiError& e) { SendJson(res, e.status, e.ToJson()); }

std::string Sse(const OrderedJson& chunk) { return "data: " + Dump(chunk) + "\n\n"; }

const ApiError kShuttingDown{503, "the server is shutting down", "server_error", "",
                             "shutting_down"};

const char* FinishName(FinishReason r) { return r == FinishReason::kLength ? "length" : "stop"; }

// OpenAI's tool_calls entries for `calls`, numbered from `first`; ids
// "call_<response>_<choice>_<k>"
// (<response>: the number of the response id "chatcmpl-<n>").
OrderedJson ToolCallsJson(const std::vector<ToolCall>& calls, const std::string& response_id,
                          size_t choice, int64_t first, bool stream) {
  const std::string id = response_id.substr(response_id.find('-') + 1);
  OrderedJson out = OrderedJson::array();
  for (size_t k = 0; k < calls.size(); ++k) {
    const int64_t n = first + static_cast<int64_t>(k);
    OrderedJson c = OrderedJson::object();
    if (stream) c["index"] = n;
    c["id"] = fmt::format("call_{}_{}_{}", id, choice, n);
    c["type"] = "function";
    c["function"] = {{"name", calls[k].name}, {"arguments", calls[k].arguments}};
    out.push_back(std::move(c));
  }
  return out;
}

// The prompt counts once for all the choices; cached_tokens is the first choice's reuse (the
// others copy its cache).
OrderedJson Usage(const std::vector<std::shared_ptr<Job>>& jobs) {
  const Job& first = *jobs.front();
  int64_t completion = 0;
  for (const auto& j : jobs) completion += j->completion_tokens();
  return {{"prompt_tokens", first.prompt_tokens()},
          {"completion_tokens", completion},
          {"total_tokens", first.prompt_tokens() + completion},
          {"prompt_tokens_details", {{"cached_tokens", first.reused_tokens()}}}};
}

// Writes one Prometheus metric with its HELP and TYPE lines.
void Metric(std::string* out, const char* name, const char* type, const char* help, double value) {
  *out += fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, value);
}

}  // namespace

struct Server::Impl {
  Impl(const Model& model, const Tokenizer& tokenizer, const ServerOptions& options)
      : model(model),
        tokenizer(tokenizer),
        options(options),
        scheduler(model, tokenizer, options.scheduler),
        created(static_cast<int64_t>(std::time(nullptr))) {
    try {
      chat_template = std::make_unique<ChatTemplate>(tokenizer.config());
    } catch (const Error& e) {
      no_template = e.what();  // chat requests get this error; completions still work
    }
    tool_markup = FindToolMarkup(tokenizer, tokenizer.config().chat_template);
    vocabulary = std::make_shared<SchemaVocabulary>(tokenizer, model.config().vocab_size, EosIds());
    limits.model_name = options.model_name;
    limits.ctx_size = options.scheduler.ctx_size;
    Routes();
  }

  void Routes();
  void Complete(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  void Tokenize(const httplib::Request& req, httplib::Response& res);
  void Detokenize(const httplib::Request& req, httplib::Response& res);
  // The 413 for a body over --max-body, counted as invalid; false when the body fits.
  bool TooLarge(const httplib::Request& req, httplib::Response& res);
  // A 4xx answer, counted as invalid.
  void Fail(httplib::Response& res, const ApiError& e) {
    ++invalid_requests;
    SendError(res, e);
  }
  // The body parsed by `parse`, or null after answering its error (or the 413).
  template <typename R>
  std::optional<R> Parsed(const httplib::Request& req, httplib::Response& res,
                          std::variant<R, ApiError> (*parse)(std::string_view)) {
    if (TooLarge(req, res)) return std::nullopt;
    std::variant<R, ApiError> parsed = parse(req.body);
    if (auto* e = std::get_if<ApiError>(&parsed)) {
      Fail(res, *e);
      return std::nullopt;
    }
    return std::get<R>(std::move(parsed));
  }
  std::string Metrics() const;
  // The ids that end an answer: the model's EOS ids and the tokenizer's.
  std::vector<int32_t> EosIds() const {
    std::vector<int32_t> eos(model.config().eos_token_ids.begin(),
                             model.config().eos_token_ids.end());
    if (tokenizer.eos_id()) eos.push_back(*tokenizer.eos_id());
    return eos;
  }
  OrderedJson Head(Endpoint endpoint, bool chunk) const;

  const Model& model;
  const Tokenizer& tokenizer;
  const ServerOptions options;
  Scheduler scheduler;
  std::unique_ptr<ChatTemplate> chat_template;
  std::string no_template;
  std::optional<ToolMarkup> tool_markup;  // null: the tokenizer has no tool-call markers
  // The vocabulary as the json_schema and tool-call masks walk it, built once.
  std::shared_ptr<const SchemaVocabulary> vocabulary;
  RequestLimits limits;
  const int64_t created;
  httplib::Server http;
  std::atomic<int64_t> chat_requests{0}, completion_requests{0}, invalid_requests{0};
  std::atomic<uint64_t> next_id{1};
  std::atomic<uint64_t> next_siblings{0};  // ServeRequest::siblings of requests with n > 1
  std::atomic<bool> stopping{false};
};

OrderedJson Server::Impl::Head(Endpoint endpoint, bool chunk) const {
  const bool chat = endpoint == Endpoint::kChat;
  return {
      {"id", ""},
      {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
      {"created", static_cast<int64_t>(std::time(nullptr))},
      {"model", options.model_name},
      {"system_fingerprint", "dsv3"}};
}

bool Server::Impl::TooLarge(const httplib::Request& req, httplib::Response& res) {
  if (req.body.size() <= options.max_body) return false;
  Fail(res, {413, fmt::format("the request body exceeds {} bytes", options.max_body),
             "invalid_request_error", "", "request_too_large"});
  return true;
}

// OpenAI's log-probability objects for the tokens in `lps`. Chat: {"content": [{"token",
// "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}], "refusal": null};
// completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"},
// *offset counting the bytes of the tokens before. A token whose bytes are not valid UTF-8 (part
// of a character) is written "bytes:\xNN..." as OpenAI does.
OrderedJson LogprobsJson(const std::vector<TokenLogprobs>& lps, bool chat,
                         const Tokenizer& tokenizer, int64_t* offset) {
  auto text = [&](int32_t id) {
    const std::string_view b = tokenizer.TokenBytes(id);
    if (FindInvalidUtf8(b) == std::string_view::npos) return std::string(b);
    std::string out = "bytes:";
    for (const unsigned char c : b) out += fmt::format("\\x{:02x}", c);
    return out;
  };
  auto bytes = [&](int32_t id) {
    OrderedJson a = OrderedJson::array();
    for (const unsigned char c : tokenizer.TokenBytes(id)) a.push_back(c);
    return a;
  };
  if (chat) {
    OrderedJson content = OrderedJson::array();
    for (const TokenLogprobs& lp : lps) {
      OrderedJson top = OrderedJson::array();
      for (const auto& [id, l] : lp.top) {
        top.push_back({{"token", text(id)}, {"logprob", l}, {"bytes", bytes(id)}});
      }
      content.push_back({{"token", text(lp.token)},
                         {"logprob", lp.logprob},
                         {"bytes", bytes(lp.token)},
                         {"top_logprobs", top}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  OrderedJson tokens = OrderedJson::array(), logprobs = OrderedJson::array(),
              tops = OrderedJson::array(), offsets = OrderedJson::array();
  for (const TokenLogprobs& lp : lps) {
    tokens.push_back(text(lp.token));
    logprobs.push_back(lp.logprob);
    OrderedJson top = OrderedJson::object();
    for (const auto& [id, l] : lp.top) top[text(id)] = l;
    tops.push_back(top);
    offsets.push_back(*offset);
    *offset += static_cast<int64_t>(tokenizer.TokenBytes(lp.token).size());
  }
  return {{"tokens", tokens},
          {"token_logprobs", logprobs},
          {"top_logprobs", tops},
          {"text_offset", offsets}};
}

// {"tokens": [ids]} or, with_pieces, {"tokens": [{"id", "piece"}]}: the piece is the token's
// text when its bytes are valid UTF-8, else the list of its bytes (as llama.cpp answers).
void Server::Impl::Tokenize(const httplib::Request& req, httplib::Response& res) {
  const std::optional<TokenizeRequest> r = Parsed(req, res, ParseTokenizeRequest);
  if (!r) return;
  std::vector<int32_t> ids;
  try {
    ids = tokenizer.Encode(r->content, r->add_special);
  } catch (const Error& e) {
    return Fail(res, {400, e.what(), "invalid_request_error", "content", ""});
  }
  OrderedJson tokens = OrderedJson::array();
  for (const int32_t id : ids) {
    if (!r->with_pieces) {
      tokens.push_back(id);
      continue;
    }
    const std::string_view bytes = tokenizer.TokenBytes(id);
    OrderedJson piece;
    if (FindInvalidUtf8(bytes) == std::string_view::npos) {
      piece = std::string(bytes);
    } else {
      piece = OrderedJson::array();
      for (const unsigned char b : bytes) piece.push_back(b);
    }
    tokens.push_back({{"id", id}, {"piece", piece}});
  }
  SendJson(res, 200, {{"tokens", tokens}});
}

// {"content": text} of the ids, special tokens written out.
void Server::Impl::Detokenize(const httplib::Request& req, httplib::Response& res) {
  const std::optional<DetokenizeRequest> r = Parsed(req, res, ParseDetokenizeRequest);
  if (!r) return;
  for (size_t i = 0; i < r->tokens.size(); ++i) {
    if (!tokenizer.IsValidId(r->tokens[i])) {
      return Fail(res, {400, fmt::format("token id {} is not in the vocabulary", r->tokens[i]),
                        "invalid_request_error", fmt::format("tokens[{}]", i), "invalid_value"});
    }
  }
  SendJson(res, 200, {{"content", tokenizer.Decode(r->tokens)}});
}

void Server::Impl::Complete(const httplib::Request& req, httplib::Response& res,
                            Endpoint endpoint) {
  if (TooLarge(req, res)) return;
  std::variant<ApiRequest, ApiError> parsed = ParseRequest(req.body, endpoint, limits);
  if (auto* e = std::get_if<ApiError>(&parsed)) return Fail(res, *e);
  const ApiRequest& r = std::get<ApiRequest>(parsed);
  const bool chat = endpoint == Endpoint::kChat;
  for (const auto& [id, bias] : r.sampling.logit_bias) {
    if (id >= model.config().vocab_size) {
      return Fail(res, {400,
                        fmt::format("'logit_bias' names token {}; the vocabulary has {} tokens", id,
                                    model.config().vocab_size),
                        "invalid_request_error", "logit_bias", "invalid_value"});
    }
  }

  ServeRequest sr;
  bool think = false;
  try {
    if (chat) {
      if (!chat_template)
        return Fail(res, {400, no_template, "invalid_request_error", "messages", ""});
      const bool tools = !r.tools.empty();
      if (tools && !tool_markup) {
        return Fail(res, {400,
                          "'tools': this model's tokenizer has no DeepSeek tool-call tokens "
                          "(<｜tool▁calls▁begin｜> ...)",
                          "invalid_request_error", "tools", "unsupported_parameter"});
      }
      std::string text = chat_template->Apply(r.messages, /*add_generation_prompt=*/true);
      if (tools) {
        // Templates that show the tools render them from `tools`; for the others (V3's, R1's)
        // they are described in a system message.
        const OrderedJson extra = {{"tools", r.tools}};
        std::string with = chat_template->Apply(r.messages, true, extra);
        if (with == text) {
          with = chat_template->Apply(WithToolPrompt(r.messages, r.tools, tool_markup->format),
                                      true, extra);
        }
        text = std::move(with);
      }
      think = OpensThink(text);
      sr.prompt = tokenizer.Encode(text);
    } else {
      sr.prompt = tokenizer.Encode(r.prompt, /*add_special_tokens=*/true);
    }
  } catch (const Error& e) {
    return Fail(res, {400, e.what(), "invalid_request_error", chat ? "messages" : "prompt", ""});
  }
  const int64_t P = static_cast<int64_t>(sr.prompt.size()), ctx = limits.ctx_size;
  if (P == 0)
    return Fail(res, {400, "the prompt encodes to no tokens", "invalid_request_error", "", ""});
  // Every new token but the last is fed back, so ctx - P + 1 new tokens fit.
  const int64_t room = ctx - P + 1;
  if (room < 1 || r.max_tokens.value_or(1) > room) {
    return Fail(res,
                {400,
                 fmt::format("the prompt is {} tokens and max_tokens is {}; the context holds {} "
                             "tokens",
                             P, r.max_tokens.value_or(1), ctx),
                 "invalid_request_error", r.max_tokens ? "max_tokens" : "messages",
                 "context_length_exceeded"});
  }
  sr.options.generate.max_new_tokens = r.max_tokens.value_or(room);
  sr.options.generate.sampling = r.sampling;
  if (!r.seeded) sr.options.generate.sampling.seed = std::random_device{}();
  sr.options.stop = r.stop;
  if (r.json_schema) {  // response_format json_object ({"type": "object"}) or json_schema
    if (think) {        // a reasoning model's answer opens with its thoughts, which are not JSON
      return Fail(res, {400,
                        fmt::format("'response_format' {} is not supported for a reasoning model "
                                    "whose answers start with <think>",
                                    r.json_object ? "json_object" : "json_schema"),
                        "invalid_request_error", "response_format", "unsupported_parameter"});
    }
    sr.constraint = [this, schema = r.json_schema](int64_t max_tokens) {
      return std::make_unique<JsonSchemaMask>(vocabulary, max_tokens, schema);
    };
    sr.options.generate.stop_at_eos = true;
  }
  // Tools: the calls are constrained to the markup, the names and each function's parameters.
  const bool tools = chat && !r.tools.empty();
  if (tools) {
    auto tc = std::make_shared<ToolConstraint>();
    tc->parallel = r.parallel_tool_calls;
    tc->mode = r.tool_choice == ToolChoice::kNone   ? ToolConstraint::Mode::kNone
               : r.tool_choice == ToolChoice::kAuto ? ToolConstraint::Mode::kAuto
                                                    : ToolConstraint::Mode::kRequired;
    for (size_t i = 0; i < r.tools.size(); ++i) {
      const std::string name = r.tools[i]["function"]["name"].get<std::string>();
      if (r.tool_choice == ToolChoice::kFunction && name != r.tool_name) continue;
      tc->names.push_back(name);
      tc->parameters.push_back(r.tool_parameters[i]);
    }
    if (think && tc->mode == ToolConstraint::Mode::kRequired) {
      return Fail(res, {400,
                        "'tool_choice' \"required\" or a function is not supported for a "
                        "reasoning model whose answers start with <think> (use \"auto\")",
                        "invalid_request_error", "tool_choice", "unsupported_parameter"});
    }
    sr.constraint = [this, tc, markup = *tool_markup](int64_t max_tokens) {
      return std::make_unique<ToolCallMask>(vocabulary, max_tokens, markup, tc);
    };
    sr.options.generate.stop_at_eos = true;
  }
  const bool parse_calls = tools && r.tool_choice != ToolChoice::kNone;
  if (r.n > scheduler.options().parallel) {
    return Fail(res, {400,
                      fmt::format("'n' is {}, but the server decodes at most {} requests together "
                                  "(--parallel)",
                                  r.n, scheduler.options().parallel),
                      "invalid_request_error", "n", "invalid_value"});
  }
  // n choices: n requests of one sibling group, choice i sampling with seed + i.
  if (r.n > 1) sr.siblings = ++next_siblings;
  std::vector<std::shared_ptr<Job>> jobs;
  for (int64_t i = 0; i < r.n; ++i) {
    ServeRequest one = sr;
    one.options.generate.sampling.seed += static_cast<uint64_t>(i);
    std::shared_ptr<Job> job = scheduler.Submit(std::move(one));
    if (!job) {
      for (const auto& j : jobs) j->Cancel();
      return SendError(res, stopping ? kShuttingDown
                                     : ApiError{503,
                                                "the server is busy: every slot and queue place "
                                                "is taken",
                                                "server_error", "", "queue_full"});
    }
    jobs.push_back(std::move(job));
  }
  ++(chat ? chat_requests : completion_requests);
  OrderedJson head = Head(endpoint, r.stream);
  head["id"] = fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", next_id++);

  const bool logprobs = r.sampling.logprobs >= 0;
  if (!r.stream) {
    OrderedJson choices = OrderedJson::array();
    for (size_t i = 0; i < jobs.size(); ++i) {
      Job& job = *jobs[i];
      std::string text;
      std::vector<TokenLogprobs> lps;
      while (!job.Wait(&text, kPoll, logprobs ? &lps : nullptr)) {
      }
      if (job.finish_reason() == FinishReason::kCancelled) {
        for (const auto& j : jobs) j->Cancel();
        return SendError(res, kShuttingDown);
      }
      OrderedJson choice = {{"index", i}};
      const char* finish = FinishName(job.finish_reason());
      if (chat) {
        ReasoningSplitter split(think);
        ReasoningSplitter::Parts parts = split.Push(text), rest = split.Finish();
        std::string content = parts.content + rest.content;
        std::vector<ToolCall> calls;
        if (parse_calls) {
          ToolCallParser parser;
          ToolCallParser::Parts p = parser.Push(content), q = parser.Finish();
          content = p.content + q.content;
          calls = std::move(p.calls);
          calls.insert(calls.end(), q.calls.begin(), q.calls.end());
        }
        OrderedJson message = {{"role", "assistant"}};
        message["content"] = calls.empty() || !content.empty() ? OrderedJson(content) : nullptr;
        const std::string reasoning = parts.reasoning + rest.reasoning;
        if (think || !reasoning.empty()) message["reasoning_content"] = reasoning;
        if (!calls.empty()) {
          message["tool_calls"] = ToolCallsJson(calls, head["id"].get<std::string>(), i, 0, false);
        }
        choice["message"] = message;
        if (!calls.empty() && job.finish_reason() == FinishReason::kStop) finish = "tool_calls";
      } else {
        choice["text"] = text;
      }
      int64_t offset = 0;
      choice["logprobs"] = logprobs ? LogprobsJson(lps, chat, tokenizer, &offset) : OrderedJson();
      choice["finish_reason"] = finish;
      choices.push_back(choice);
    }
    head["choices"] = choices;
    head["usage"] = Usage(jobs);
    return SendJson(res, 200, head);
  }

  // Streaming: one SSE event per piece of text of a choice. The provider runs on this
  // connection's thread and waits on the jobs in turn; a failed write (the client left) cancels
  // them at once.
  struct Choice {  // the stream's state of jobs[i]
    explicit Choice(bool think) : split(think) {}
    ReasoningSplitter split;
    ToolCallParser calls;  // with tools: the content's calls
    bool started = false, finished = false;
    int64_t offset = 0;              // completions' text_offset
    std::vector<TokenLogprobs> lps;  // taken, not yet sent
  };
  struct Stream {
    std::vector<std::shared_ptr<Job>> jobs;
    std::vector<Choice> choices;
    OrderedJson head;
    bool chat, include_usage, logprobs, parse_calls;
    const Tokenizer& tokenizer;
  };
  auto st = std::make_shared<Stream>(
      Stream{std::move(jobs), {}, head, chat, r.include_usage, logprobs, parse_calls, tokenizer});
  for (size_t i = 0; i < st->jobs.size(); ++i) st->choices.emplace_back(think);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st](size_t, httplib::DataSink& sink) {
        const auto send = [&](size_t index, const std::string& reasoning,
                              const std::string& content, const char* finish,
                              const std::vector<ToolCall>& calls = {}) {
          Choice& c = st->choices[index];
          OrderedJson chunk = st->head, choice = {{"index", index}};
          if (st->chat) {
            OrderedJson delta = OrderedJson::object();
            if (!c.started) delta["role"] = "assistant";
            if (!reasoning.empty()) delta["reasoning_content"] = reasoning;
            if (!content.empty() || !c.started) delta["content"] = content;
            if (!calls.empty()) {
              // One delta per call, whole: id, name and all its arguments at once.
              delta["tool_calls"] =
                  ToolCallsJson(calls, st->head["id"].get<std::string>(), index,
                                c.calls.calls() - static_cast<int64_t>(calls.size()), true);
            }
            choice["delta"] = delta;
          } else {
            choice["text"] = content;
          }
          // The log-probabilities taken so far ride on the next chunk sent.
          choice["logprobs"] = nullptr;
          if (st->logprobs && !c.lps.empty()) {
            choice["logprobs"] = LogprobsJson(c.lps, st->chat, st->tokenizer, &c.offset);
            c.lps.clear();
          }
          choice["finish_reason"] = finish ? OrderedJson(finish) : OrderedJson();
          chunk["choices"] = OrderedJson::array({choice});
          if (st->include_usage) chunk["usage"] = nullptr;
          c.started = true;
          const std::string event = Sse(chunk);
          return sink.write(event.data(), event.size());
        };
        const auto send_parts = [&](size_t index, const ReasoningSplitter::Parts& p,
                                    bool last = false) {
          if (!st->parse_calls) {
            if (p.reasoning.empty() && p.content.empty()) return true;
            return send(index, p.reasoning, p.content, nullptr);
          }
          ToolCallParser& parser = st->choices[index].calls;
          ToolCallParser::Parts t = parser.Push(p.content);
          if (last) {
            ToolCallParser::Parts f = parser.Finish();
            t.content += f.content;
            t.calls.insert(t.calls.end(), f.calls.begin(), f.calls.end());
          }
          if (p.reasoning.empty() && t.content.empty() && t.calls.empty()) return true;
          return send(index, p.reasoning, t.content, nullptr, t.calls);
        };
        const auto cancel = [&] {
          for (const auto& job : st->jobs) job->Cancel();
          return false;
        };
        bool ok = true, all_finished = true;
        const auto wait = std::chrono::milliseconds(
            std::max<int64_t>(1, kPoll.count() / static_cast<int64_t>(st->choices.size())));
        for (size_t i = 0; i < st->choices.size() && ok; ++i) {
          Choice& c = st->choices[i];
          if (!c.started && st->chat) ok = send(i, "", "", nullptr);
          if (c.finished) continue;
          std::string text;
          Job& job = *st->jobs[i];
          c.finished = job.Wait(&text, wait, st->logprobs ? &c.lps : nullptr);
          if (ok && !text.empty()) {
            ok = send_parts(i, st->chat ? c.split.Push(text) : ReasoningSplitter::Parts{"", text});
          }
          if (c.finished && ok && job.finish_reason() != FinishReason::kCancelled) {
            if (st->chat) ok = send_parts(i, c.split.Finish(), /*last=*/true);
            const bool called = c.calls.calls() > 0 && job.finish_reason() == FinishReason::kStop;
            if (ok) ok = send(i, "", "", called ? "tool_calls" : FinishName(job.finish_reason()));
          }
          all_finished &= c.finished;
        }
        if (ok && !all_finished) ok = sink.is_writable();
        if (!ok) return cancel();
        if (!all_finished) return true;
        bool cancelled = false;
        for (const auto& job : st->jobs) {
          cancelled |= job->finish_reason() == FinishReason::kCancelled;
        }
        if (cancelled) {
          const std::string event = Sse(kShuttingDown.ToJson());
          sink.write(event.data(), event.size());
        } else if (st->include_usage) {
          OrderedJson chunk = st->head;
          chunk["choices"] = OrderedJson::array();
          chunk["usage"] = Usage(st->jobs);
          const std::string event = Sse(chunk);
          if (!sink.write(event.data(), event.size())) return false;
        }
        static constexpr std::string_view kDone = "data: [DONE]\n\n";
        sink.write(kDone.data(), kDone.size());
        sink.done();
        return true;
      },
      [st](bool success) {
        if (!success) {
          for (const auto& job : st->jobs) job->Cancel();
        }
      });
}

std::string Server::Impl::Metrics() const {
  const SchedulerStats s = scheduler.Stats();
  std::string out;
  out += "# HELP dsv3_requests_total Completion requests accepted, by endpoint.\n";
  out += "# TYPE dsv3_requests_total counter\n";
  out += fmt::format("dsv3_requests_total{{endpoint=\"chat\"}} {}\n", chat_requests.load());
  out += fmt::format("dsv3_requests_total{{endpoint=\"completions\"}} {}\n",
                     completion_requests.load());
  Metric(&out, "dsv3_requests_invalid_total", "counter", "Requests answered with a 4xx error.",
         static_cast<double>(invalid_requests.load()));
  Metric(&out, "dsv3_requests_rejected_total", "counter",
         "Requests refused with 503 because the queue was full.",
         static_cast<double>(s.requests_rejected));
  Metric(&out, "dsv3_requests_finished_total", "counter", "Requests that ran to their end.",
         static_cast<double>(s.requests_finished));
  Metric(&out, "dsv3_requests_cancelled_total", "counter",
         "Requests cancelled (client gone or shutdown).",
         static_cast<double>(s.requests_cancelled));
  Metric(&out, "dsv3_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
         static_cast<double>(s.prompt_tokens));
  Metric(&out, "dsv3_prompt_tokens_reused_total", "counter",
         "Prompt tokens taken from a cached prefix instead of computed.",
         static_cast<double>(s.prompt_tokens_reused));
  Metric(&out, "dsv3_tokens_generated_total", "counter", "Tokens generated.",
         static_cast<double>(s.tokens_generated));
  Metric(&out, "dsv3_decode_steps_total", "counter", "Batched decode passes.",
         static_cast<double>(s.decode_steps));
  Metric(&out, "dsv3_drafts_proposed_total", "counter",
         "MTP draft tokens fed to verification passes (--draft).",
         static_cast<double>(s.drafts_proposed));
  Metric(&out, "dsv3_drafts_accepted_total", "counter", "MTP draft tokens the main model accepted.",
         static_cast<double>(s.drafts_accepted));
  Metric(&out, "dsv3_decode_seconds_total", "counter", "Time spent in batched decode passes.",
         s.decode_seconds);
  Metric(&out, "dsv3_prefill_seconds_total", "counter", "Time spent prefilling prompts.",
         s.prefill_seconds);
  Metric(&out, "dsv3_decode_tokens_per_second", "gauge",
         "Aggregate decode throughput: decode tokens / decode seconds since start.",
         s.decode_tokens_per_second());
  Metric(&out, "dsv3_queue_length", "gauge", "Requests waiting for a slot.",
         static_cast<double>(s.queue_length));
  Metric(&out, "dsv3_requests_running", "gauge", "Requests holding a slot.",
         static_cast<double>(s.slots_in_use));
  Metric(&out, "dsv3_kv_slots", "gauge", "KV cache slots (--parallel).",
         static_cast<double>(s.slots));
  Metric(&out, "dsv3_kv_slots_in_use", "gauge", "KV cache slots serving a request.",
         static_cast<double>(s.slots_in_use));
  Metric(&out, "dsv3_kv_tokens_in_use", "gauge", "Cached positions of the slots in use.",
         static_cast<double>(s.kv_tokens_in_use));
  Metric(&out, "dsv3_kv_tokens_cached", "gauge",
         "Cached positions of all slots (free slots keep theirs for prefix reuse).",
         static_cast<double>(s.kv_tokens_cached));
  Metric(&out, "dsv3_kv_capacity_tokens", "gauge", "Positions all slots together can hold.",
         static_cast<double>(s.slots * s.capacity_per_slot));
  return out;
}

void Server::Impl::Routes() {
  // A connection holds a thread while its request waits or streams; connections beyond the
  // threads wait for one in httplib's own queue.
  const int threads = options.http_threads > 0
                          ? options.http_threads
                          : static_cast<int>(std::min<int64_t>(
                                options.scheduler.parallel + options.scheduler.queue + 8, 256));
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body);
  http.set_keep_alive_timeout(2);
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e{res.status, fmt::format("HTTP {}", res.status), "invalid_request_error", "", ""};
    if (res.status == 404) {
      e.message = fmt::format("no route for {} {}", req.method, req.path), e.code = "not_found";
    } else if (res.status == 413) {
      e.message = fmt::format("the request body exceeds {} bytes", options.max_body);
      e.code = "request_too_large";
    }
    SendError(res, e);
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        SendError(res, {500, what, "server_error", "", ""});
      });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    SendJson(res, stopping ? 503 : 200, {{"status", stopping ? "shutting down" : "ok"}});
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Metrics(), "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const OrderedJson m = {{"id", options.model_name},
                           {"object", "model"},
                           {"created", created},
                           {"owned_by", "dsv3"},
                           {"context_length", options.scheduler.ctx_size}};
    SendJson(res, 200, {{"object", "list"}, {"data", OrderedJson::array({m})}});
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Complete(req, res, Endpoint::kChat);
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Complete(req, res, Endpoint::kCompletion);
  });
  http.Post("/tokenize",
            [this](const httplib::Request& req, httplib::Response& res) { Tokenize(req, res); });
  http.Post("/detokenize",
            [this](const httplib::Request& req, httplib::Response& res) { Detokenize(req, res); });
}

Server::Server(const Model& model, const Tokenizer& tokenizer, const ServerOptions& options)
    : impl_(std::make_unique<Impl>(model, tokenizer, options)) {}

Server::~Server() { Stop(); }

int Server::Bind() {
  const ServerOptions& o = impl_->options;
  const int port = o.port == 0 ? impl_->http.bind_to_any_port(o.host)
                               : (impl_->http.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port <= 0) Fail("cannot listen on {}:{}", o.host, o.port);
  return port;
}

void Server::Run() { impl_->http.listen_after_bind(); }

void Server::Stop() {
  impl_->stopping = true;
  impl_->http.stop();
  impl_->scheduler.Shutdown();
}

}  // namespace dsv3::server
