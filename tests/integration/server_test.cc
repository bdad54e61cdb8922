// `dsv3 serve` end to end on a tiny synthetic model carrying the DeepSeek-V3 tokenizer, on
// 127.0.0.1 with --port 0: the official `openai` npm package (a real client; installed with npm
// into the build folder on first use) gets greedy answers equal to `dsv3 generate`'s, streaming
// and not, chat and completions; 16 concurrent streams each answer as alone; a client that hangs
// up mid-stream frees its slot; bad requests get OpenAI-shaped 4xx errors and the server keeps
// serving; SIGTERM ends it with status 0.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <set>
#include <thread>

#include "core/json.h"
#include "runtime/json_schema.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using test::Dsv3Binary;
using test::ReadFile;
using test::RunCommand;
using test::RunResult;
using test::TempDir;
using test::TestData;
using ::testing::HasSubstr;

constexpr const char* kOpenAiPackage = "openai@4.95.0";

std::string Cmd(const std::string& args) { return Dsv3Binary() + " " + args; }
std::string TokDir() { return TestData("tokenizer/deepseek_v3"); }

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = std::min(text.find('\n', start), text.size());
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

// Returns the folder holding node_modules/openai, installing it there first if needed (under a
// lock: ctest runs tests in parallel), or "" when node or the package cannot be had.
std::string OpenAiPackageDir(std::string* why) {
  return test::NpmPackageDir("npm", kOpenAiPackage, why);
}

// A running `dsv3 serve ARGS`.
class ServerProcess : public test::ServerProcess {
 public:
  ServerProcess(const std::string& args, const std::string& log)
      : test::ServerProcess(Cmd("serve " + args), log) {}
};

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(TokDir())) return;
    dir_ = new TempDir();
    const RunResult r = test::SynthTextModel(model());
    ASSERT_EQ(r.status, 0) << r.output();
    server_ = new ServerProcess(
        "-m " + model() + " --port 0 --parallel 4 --ctx-size 512 -t 1 --model-name tiny",
        *dir_ / "server.log");
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
    server_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override {
    DSV3_REQUIRE_DATA(TokDir());
    ASSERT_GT(server_->port(), 0) << server_->log();
  }
  static std::string model() { return *dir_ / "m"; }

  // Runs a scenario of openai_client.cjs; skips (fails on CI) without node or the package.
  OrderedJson Client(const std::string& scenario, const OrderedJson& args) {
    std::string why;
    const std::string npm = OpenAiPackageDir(&why);
    if (npm.empty()) {
      if (std::getenv("CI") != nullptr) ADD_FAILURE() << why;
      return nullptr;
    }
    TempDir tmp;
    test::WriteFile(tmp / "args.json", args.dump());
    const RunResult r =
        RunCommand("NODE_PATH=" + npm + "/node_modules timeout 300 node " +
                   std::string(DSV3_SOURCE_DIR) + "/tests/integration/openai_client.cjs " +
                   server_->url() + " " + scenario + " \"$(cat " + (tmp / "args.json") + ")\"");
    EXPECT_EQ(r.status, 0) << r.output() << "\nserver log:\n" << server_->log();
    if (r.status != 0) return nullptr;
    return OrderedJson::parse(r.out);
  }
  // `dsv3 generate`'s text for the same prompt (greedy), without the final newline.
  static std::string Generate(const std::string& prompt, int n, bool raw = false) {
    TempDir tmp;
    test::WriteFile(tmp / "prompt", prompt);
    const RunResult r =
        RunCommand(Cmd("generate -m " + model() + " -t 1 -n " + std::to_string(n) +
                       (raw ? " --raw" : "") + " -p \"$(cat " + (tmp / "prompt") + ")\""));
    EXPECT_EQ(r.status, 0) << r.output();
    return r.out.empty() ? "" : r.out.substr(0, r.out.size() - 1);
  }

  static TempDir* dir_;
  static ServerProcess* server_;
};
TempDir* ServerTest::dir_ = nullptr;
ServerProcess* ServerTest::server_ = nullptr;

TEST_F(ServerTest, OpenAiClientGetsWhatGenerateGives) {
  OrderedJson r = Client("basic", {{"prompt", "Hello!"}, {"n", 12}, {"more", " And then"}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  const std::string chat = Generate("Hello!", 12), raw = Generate("Hello!", 12, /*raw=*/true);
  EXPECT_EQ(r["chat"]["content"], chat);
  EXPECT_EQ(r["chat"]["object"], "chat.completion");
  EXPECT_EQ(r["chat"]["role"], "assistant");
  EXPECT_TRUE(r["chat"]["reasoning"].is_null());  // not an R1-style template
  EXPECT_EQ(r["chat_stream"]["content"], chat);
  EXPECT_EQ(r["chat_stream"]["role"], "assistant");
  EXPECT_EQ(r["completion"]["text"], raw);
  EXPECT_EQ(r["completion"]["object"], "text_completion");
  EXPECT_EQ(r["completion_stream"]["text"], raw);
  // The chat prompt is BOS <｜User｜> Hello ! <｜Assistant｜>.
  EXPECT_EQ(r["chat"]["usage"]["prompt_tokens"], 5);
  const int64_t n = r["chat"]["usage"]["completion_tokens"].get<int64_t>();
  EXPECT_EQ(r["chat"]["finish"], n < 12 ? "stop" : "length");
  EXPECT_EQ(r["chat"]["usage"]["total_tokens"], 5 + n);
  EXPECT_EQ(r["chat_stream"]["usage"]["completion_tokens"], n);
  EXPECT_EQ(r["chat_stream"]["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(r["chat_stream"]["finish"], r["chat"]["finish"]);
  EXPECT_EQ(r["completion_stream"]["finish"], r["completion"]["finish"]);
  EXPECT_EQ(r["models"], OrderedJson::array({"tiny"}));
  // The continuation reused the cached prompt and answers as a fresh generate does.
  EXPECT_GT(r["next"]["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>(), 0);
  EXPECT_EQ(r["next"]["text"], Generate(r["next"]["prompt"].get<std::string>(), 12, true));
}

TEST_F(ServerTest, SixteenConcurrentStreamsEachAnswerAsAlone) {
  OrderedJson prompts = OrderedJson::array();
  for (int i = 0; i < 16; ++i) {
    prompts.push_back(fmt::format("Question {}: what is {} plus {}?", i, i * 7, 100 - i));
  }
  OrderedJson r = Client("load", {{"prompts", prompts}, {"n", 8}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  ASSERT_EQ(r["results"].size(), 16u) << r.dump();
  for (int i = 0; i < 16; ++i) {
    const OrderedJson& one = r["results"][i];
    ASSERT_FALSE(one.contains("error")) << one.dump();
    EXPECT_EQ(one["content"], r["alone"][i]) << prompts[i];
    // Alone on the server is what generate gives (checked for a few: each run loads the model).
    if (i % 5 == 0) {
      EXPECT_EQ(one["content"], Generate(prompts[i], 8)) << prompts[i];
    }
    EXPECT_EQ(one["usage"]["completion_tokens"].get<int64_t>() < 8 ? "stop" : "length",
              one["finish"]);
  }
  EXPECT_EQ(r["metrics"]["dsv3_kv_slots"], 4);
  EXPECT_GE(r["metrics"]["dsv3_requests_total{endpoint=\"chat\"}"].get<double>(), 16);
  EXPECT_GT(r["metrics"]["dsv3_tokens_generated_total"].get<double>(), 0);
  EXPECT_GT(r["metrics"]["dsv3_decode_tokens_per_second"].get<double>(), 0);
}

TEST_F(ServerTest, DisconnectMidStreamFreesTheSlot) {
  OrderedJson r = Client("disconnect", {{"prompt", "Tell me a long story."}, {"n", 480}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  EXPECT_EQ(r["chunks"], 3);
  EXPECT_EQ(r["metrics"]["dsv3_kv_slots_in_use"], 0);
  EXPECT_GE(r["metrics"]["dsv3_requests_cancelled_total"].get<double>(), 1);
  EXPECT_EQ(r["after"], Generate("Hi", 4));
  EXPECT_EQ(r["metrics_after"]["dsv3_kv_slots_in_use"], 0);
}

TEST_F(ServerTest, OpenAiClientSeesErrors) {
  OrderedJson r = Client("errors", OrderedJson::object());
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  EXPECT_EQ(r["unknown_model"]["status"], 404);
  EXPECT_EQ(r["unknown_model"]["code"], "model_not_found");
  EXPECT_EQ(r["unknown_model"]["param"], "model");
  EXPECT_EQ(r["too_many_tokens"]["status"], 400);
  EXPECT_EQ(r["too_many_tokens"]["param"], "max_tokens");
  EXPECT_EQ(r["empty_messages"]["status"], 400);
  EXPECT_EQ(r["empty_messages"]["type"], "invalid_request_error");
}

// logit_bias through the SDK: +100 on the id of " the" makes every greedy token " the".
TEST_F(ServerTest, OpenAiClientLogitBiasForcesAToken) {
  const RunResult tok = RunCommand(Cmd("tokenize --tokenizer " + TokDir() + " -p \" the\""));
  ASSERT_EQ(tok.status, 0) << tok.output();
  const int id = std::stoi(tok.out);
  OrderedJson r = Client("bias", {{"prompt", "Once upon a time"}, {"n", 6}, {"token", id}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  EXPECT_EQ(r["tokens"], 6);
  EXPECT_EQ(r["text"], Repeat(" the", 6));
}

// The "json" scenario's 100 answers and 4 streamed ones: each ends by EOS within max_tokens and
// parses, as an object (json_object) or validating against `schema`.
void ExpectJsonAnswers(const OrderedJson& r, const JsonSchema* schema) {
  ASSERT_EQ(r["answers"].size(), 100u);
  ASSERT_EQ(r["streamed"].size(), 4u);
  for (const char* part : {"answers", "streamed"}) {
    for (const OrderedJson& a : r[part]) {
      const std::string text = a["text"].get<std::string>();
      EXPECT_EQ(a["finish"], "stop") << text;
      Json j;
      ASSERT_NO_THROW(j = Json::parse(text)) << text;
      std::string why;
      if (schema) {
        EXPECT_TRUE(ValidatesJsonSchema(*schema, j, &why)) << why << ": " << text;
      } else {
        EXPECT_TRUE(j.is_object()) << text;
      }
    }
  }
}

// Fields the server does not implement are refused, not dropped: the SDK sees a 400 naming the
// field; so do schema keywords the constraint cannot enforce.
TEST_F(ServerTest, OpenAiClientSeesUnsupportedFieldsRefused) {
  OrderedJson r = Client("unsupported", OrderedJson::object());
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  for (const char* field : {"modalities", "audio", "prediction"}) {
    EXPECT_EQ(r[field]["status"], 400) << field << ": " << r[field].dump();
    EXPECT_EQ(r[field]["code"], "unsupported_parameter") << field;
    EXPECT_EQ(r[field]["param"], field);
  }
  EXPECT_EQ(r["schema"]["status"], 400) << r["schema"].dump();
  EXPECT_EQ(r["schema"]["code"], "invalid_schema");
  EXPECT_EQ(r["schema"]["param"], "response_format.json_schema.schema.properties.x.pattern");
  EXPECT_EQ(r["tool_parameters"]["status"], 400) << r["tool_parameters"].dump();
  EXPECT_EQ(r["tool_parameters"]["param"], "tools[0].function.parameters.type");
}

// response_format json_schema through the SDK on a model that knows nothing: every one of 100
// sampled answers (and 4 streamed) parses and validates against the schema.
TEST_F(ServerTest, OpenAiClientJsonSchemaAnswersAllValidate) {
  const OrderedJson schema = OrderedJson::parse(R"({
      "type": "object",
      "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad", 3, null]},
        "tags": {"type": "array", "items": {"type": "object",
                 "properties": {"k": {"type": ["string", "null"]}, "v": {"type": "number"}},
                 "required": ["v"], "additionalProperties": false}}
      },
      "required": ["name", "age", "mood"],
      "additionalProperties": false})");
  const OrderedJson format = {
      {"type", "json_schema"},
      {"json_schema", {{"name", "answer"}, {"strict", true}, {"schema", schema}}}};
  OrderedJson r =
      Client("json", {{"prompt", "Answer in JSON"}, {"n", 48}, {"response_format", format}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  auto compiled = CompileJsonSchema(Json::parse(schema.dump()));
  ASSERT_TRUE(std::holds_alternative<std::shared_ptr<const JsonSchema>>(compiled));
  ExpectJsonAnswers(r, std::get<std::shared_ptr<const JsonSchema>>(compiled).get());
}

// Tools through the SDK on a model that knows nothing, so the calls come from the constraint:
// "required" and a named function always call (names offered, arguments valid for the
// function's schema, ids, finish_reason "tool_calls"), streamed calls arrive as deltas by index;
// "auto" calls once the model opens the calls marker (pushed by a logit bias) and only once with
// parallel_tool_calls false; "none" never calls; a conversation with calls and results renders.
TEST_F(ServerTest, OpenAiClientGetsToolCalls) {
  const OrderedJson tools = OrderedJson::parse(R"([
      {"type": "function", "function": {"name": "get_weather", "description": "The weather.",
       "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                      "unit": {"enum": ["celsius", "fahrenheit"]}},
                      "required": ["city", "unit"]}}},
      {"type": "function", "function": {"name": "get_time",
       "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}},
                      "required": ["zone"]}}}])");
  const RunResult tok = RunCommand(
      Cmd("tokenize --tokenizer " + TokDir() + " -p \"" + "<｜tool▁calls▁begin｜>" + "\""));
  ASSERT_EQ(tok.status, 0) << tok.output();
  const std::string marker = tok.out.substr(0, tok.out.find_first_of(" \n"));
  OrderedJson r = Client("tools", {{"prompt", "What is the weather in Paris?"},
                                   {"n", 64},
                                   {"tools", tools},
                                   {"marker", marker}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  std::vector<std::shared_ptr<const JsonSchema>> schemas;
  for (const OrderedJson& t : tools) {
    schemas.push_back(std::get<std::shared_ptr<const JsonSchema>>(
        CompileJsonSchema(Json::parse(t["function"]["parameters"].dump()))));
  }
  const auto check_calls = [&](const OrderedJson& a, const char* only) {
    ASSERT_GE(a["calls"].size(), 1u) << a.dump();
    EXPECT_EQ(a["finish"], "tool_calls") << a.dump();
    for (const OrderedJson& c : a["calls"]) {
      const std::string name = c["name"];
      const size_t k = name == "get_weather" ? 0 : name == "get_time" ? 1 : 2;
      ASSERT_LT(k, 2u) << a.dump();
      if (only) {
        EXPECT_EQ(name, only);
      }
      EXPECT_THAT(c["id"].get<std::string>(), ::testing::StartsWith("call_"));
      Json args;
      ASSERT_NO_THROW(args = Json::parse(c["arguments"].get<std::string>())) << a.dump();
      std::string why;
      EXPECT_TRUE(ValidatesJsonSchema(*schemas[k], args, &why)) << why << ": " << a.dump();
    }
  };
  ASSERT_EQ(r["required"].size(), 8u);
  for (const OrderedJson& a : r["required"]) check_calls(a, nullptr);
  for (const OrderedJson& a : r["named"]) check_calls(a, "get_time");
  for (const OrderedJson& a : r["streamed"]) {
    check_calls(a, nullptr);
    EXPECT_EQ(a["content"], "") << a.dump();
  }
  check_calls(r["auto"], nullptr);
  EXPECT_EQ(r["auto"]["calls"].size(), 1u) << r["auto"].dump();
  EXPECT_EQ(r["none"]["calls"].size(), 0u) << r["none"].dump();
  EXPECT_NE(r["none"]["finish"], "tool_calls");
  EXPECT_EQ(r["none"]["content"].get<std::string>().find("tool"), std::string::npos);
  EXPECT_NE(r["turn"]["finish"], nullptr);
  EXPECT_GT(r["turn"]["prompt_tokens"].get<int64_t>(), 0);
}

// response_format json_object through the SDK on a model that knows nothing: every one of 100
// sampled answers (and 4 streamed) parses as a JSON object and ends by EOS within max_tokens.
TEST_F(ServerTest, OpenAiClientJsonObjectAnswersAllParse) {
  OrderedJson r = Client("json", {{"prompt", "Answer in JSON"}, {"n", 24}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  ExpectJsonAnswers(r, nullptr);
}

// n choices through the SDK: greedy choices all equal the n = 1 answer; sampled ones (seed + i
// each) differ; streamed chat choices arrive by index, each finished, and equal the same request
// not streamed; usage counts the prompt once and every choice's tokens.
TEST_F(ServerTest, OpenAiClientGetsNChoices) {
  OrderedJson r = Client("choices", {{"prompt", "Once upon a time"}, {"n", 6}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  ASSERT_EQ(r["greedy"].size(), 3u) << r.dump();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r["greedy"][i][0], i);
    EXPECT_EQ(r["greedy"][i][1], r["one"]);
  }
  ASSERT_EQ(r["sampled"].size(), 3u);
  std::set<std::string> distinct;
  for (const OrderedJson& c : r["sampled"]) distinct.insert(c[1].get<std::string>());
  EXPECT_GT(distinct.size(), 1u) << r["sampled"].dump();
  EXPECT_EQ(r["usage"]["completion_tokens"], 18);
  EXPECT_EQ(r["usage"]["total_tokens"].get<int>(), 18 + r["usage"]["prompt_tokens"].get<int>());
  for (int i = 0; i < 2; ++i) {
    const std::string k = std::to_string(i);
    EXPECT_EQ(r["streamed"]["finish"][k], "length");
    EXPECT_EQ(r["streamed"]["texts"][k], r["chat"][i][1]) << i;
  }
  EXPECT_EQ(r["streamed"]["tokens"], 12);
}

// Log-probabilities through the SDK (greedy): one entry per generated token, its bytes making up
// the text, the chosen token first among the alternatives, streamed entries equal to the
// non-streamed ones; completions' parallel lists and text offsets.
TEST_F(ServerTest, OpenAiClientGetsLogprobs) {
  OrderedJson r = Client("logprobs", {{"prompt", "Once upon a time"}, {"n", 8}});
  if (r.is_null()) GTEST_SKIP() << "no openai package";
  for (const char* mode : {"chat", "stream"}) {
    const OrderedJson& c = r[mode];
    ASSERT_EQ(c["logprobs"].size(), c["tokens"].get<size_t>()) << mode << ": " << c.dump();
    std::string bytes;
    for (const OrderedJson& e : c["logprobs"]) {
      for (const OrderedJson& b : e["bytes"]) bytes += static_cast<char>(b.get<int>());
      ASSERT_EQ(e["top_logprobs"].size(), 2u) << e.dump();
      EXPECT_EQ(e["top_logprobs"][0]["token"], e["token"]) << "greedy picks the most likely";
      EXPECT_EQ(e["top_logprobs"][0]["logprob"], e["logprob"]);
      EXPECT_LE(e["logprob"].get<double>(), 0.0);
      EXPECT_GE(e["top_logprobs"][0]["logprob"].get<double>(),
                e["top_logprobs"][1]["logprob"].get<double>());
    }
    EXPECT_EQ(bytes, c["text"].get<std::string>()) << mode;
  }
  // The same tokens; the values agree to rounding (the second request reuses the first's cached
  // prompt prefix, so its prefill runs other batch shapes).
  ASSERT_EQ(r["stream"]["logprobs"].size(), r["chat"]["logprobs"].size());
  for (size_t i = 0; i < r["chat"]["logprobs"].size(); ++i) {
    const OrderedJson &a = r["chat"]["logprobs"][i], &b = r["stream"]["logprobs"][i];
    EXPECT_EQ(a["token"], b["token"]) << i;
    EXPECT_NEAR(a["logprob"].get<double>(), b["logprob"].get<double>(), 1e-4) << i;
  }
  const OrderedJson& c = r["completion"];
  const OrderedJson& lp = c["logprobs"];
  const size_t n = c["tokens"].get<size_t>();
  ASSERT_EQ(lp["tokens"].size(), n) << c.dump();
  ASSERT_EQ(lp["token_logprobs"].size(), n);
  ASSERT_EQ(lp["top_logprobs"].size(), n);
  ASSERT_EQ(lp["text_offset"].size(), n);
  std::string text;
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(lp["text_offset"][i].get<size_t>(), text.size());
    text += lp["tokens"][i].get<std::string>();
    EXPECT_LE(lp["top_logprobs"][i].size(), 3u);
    EXPECT_GE(lp["top_logprobs"][i].size(), 1u);
  }
  EXPECT_EQ(text, c["text"].get<std::string>());
}

// Raw HTTP: bodies no SDK would send.
TEST_F(ServerTest, BadRequestsGetOpenAiErrorsAndTheServerKeepsServing) {
  httplib::Client http("127.0.0.1", server_->port());
  http.set_read_timeout(60);
  struct Case {
    std::string path, body;
    int status;
    std::string code;
  };
  const std::string chat = "/v1/chat/completions";
  const std::string hello = R"("messages": [{"role": "user", "content": "Hi"}])";
  const std::vector<Case> cases = {
      {chat, "{\"messages\": [", 400, "invalid_json"},
      {chat, "not json", 400, "invalid_json"},
      {chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\xFF\"}]}", 400,
       "invalid_encoding"},
      {chat, "{\"messages\": []}", 400, "empty_array"},
      {chat, "{" + hello + ", \"temperature\": \"warm\"}", 400, "invalid_type"},
      {chat, "{" + hello + ", \"model\": \"gpt-4o\"}", 404, "model_not_found"},
      {chat, "{" + hello + ", \"max_tokens\": 100000}", 400, "invalid_value"},
      {chat, "{" + hello + ", \"max_tokens\": 510}", 400, "context_length_exceeded"},
      {"/v1/completions", "{\"prompt\": 5}", 400, "invalid_type"},
      {"/v1/completions", "{\"prompt\": \"" + Repeat(" x", 600) + "\"}", 400,
       "context_length_exceeded"},
      {chat, std::string(9 << 20, ' '), 413, "request_too_large"},
      {"/v1/nothing", "{}", 404, "not_found"},
  };
  for (const Case& c : cases) {
    const httplib::Result res = http.Post(c.path, c.body, "application/json");
    ASSERT_TRUE(res) << c.path << " " << c.body.substr(0, 80);
    EXPECT_EQ(res->status, c.status) << c.body.substr(0, 80) << " -> " << res->body;
    const OrderedJson j = OrderedJson::parse(res->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << res->body;
    EXPECT_EQ(j["error"]["code"], c.code) << res->body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_TRUE(j["error"]["type"].is_string());
    EXPECT_TRUE(j["error"].contains("param"));
  }
  // Still serving, and healthy.
  const httplib::Result ok =
      http.Post(chat, "{" + hello + ", \"max_tokens\": 3, \"temperature\": 0}", "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  const httplib::Result health = http.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const httplib::Result metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body, HasSubstr("# TYPE dsv3_requests_invalid_total counter"));
  EXPECT_THAT(metrics->body, HasSubstr("dsv3_kv_tokens_in_use "));
  EXPECT_THAT(metrics->body, HasSubstr("dsv3_queue_length 0"));
}

// POST /tokenize and /detokenize against Hugging Face's encodings and decodings of the served
// tokenizer (../shared/testdata/tokenizer/deepseek_v3): ids with and without BOS, pieces whose
// bytes add up to the text, text from ids; bad bodies and ids are 400s naming the field.
TEST_F(ServerTest, TokenizeAndDetokenizeMatchHuggingFace) {
  httplib::Client http("127.0.0.1", server_->port());
  http.set_read_timeout(60);
  auto post = [&](const std::string& path, const OrderedJson& body) {
    const httplib::Result res = http.Post(path, body.dump(), "application/json");
    EXPECT_TRUE(res) << path;
    return res ? std::make_pair(res->status, OrderedJson::parse(res->body, nullptr, false))
               : std::make_pair(0, OrderedJson());
  };
  int encodes = 0;
  for (const std::string& line : Lines(ReadFile(TokDir() + "/encode_cases.jsonl"))) {
    if (line.empty() || ++encodes > 60) continue;
    const OrderedJson c = OrderedJson::parse(line);
    const auto [status, plain] = post("/tokenize", {{"content", c["text"]}});
    ASSERT_EQ(status, 200) << plain.dump();
    EXPECT_EQ(plain["tokens"], c["ids"]) << c["text"];
    const auto [status_bos, bos] =
        post("/tokenize", {{"content", c["text"]}, {"add_special", true}});
    ASSERT_EQ(status_bos, 200) << bos.dump();
    EXPECT_EQ(bos["tokens"], c["ids_with_bos"]) << c["text"];
    const auto [status_pieces, pieces] =
        post("/tokenize", {{"content", c["text"]}, {"with_pieces", true}});
    ASSERT_EQ(status_pieces, 200) << pieces.dump();
    std::string joined;
    ASSERT_EQ(pieces["tokens"].size(), c["ids"].size());
    for (size_t i = 0; i < pieces["tokens"].size(); ++i) {
      const OrderedJson& t = pieces["tokens"][i];
      EXPECT_EQ(t["id"], c["ids"][i]);
      if (t["piece"].is_string()) {
        joined += t["piece"].get<std::string>();
      } else {
        for (const OrderedJson& b : t["piece"]) joined += static_cast<char>(b.get<int>());
      }
    }
    EXPECT_EQ(joined, c["text"].get<std::string>());
  }
  EXPECT_GT(encodes, 10);
  int decodes = 0;
  for (const std::string& line : Lines(ReadFile(TokDir() + "/decode_cases.jsonl"))) {
    if (line.empty()) continue;
    const OrderedJson c = OrderedJson::parse(line);
    if (c["skip_special_tokens"].get<bool>()) continue;  // /detokenize writes special tokens out
    const auto [status, d] = post("/detokenize", {{"tokens", c["ids"]}});
    ASSERT_EQ(status, 200) << d.dump();
    EXPECT_EQ(d["content"], c["decoded"]) << c["ids"].dump();
    ++decodes;
  }
  EXPECT_GT(decodes, 3);
  const auto [bad_id, e1] = post("/detokenize", {{"tokens", {1, 99999999}}});
  EXPECT_EQ(bad_id, 400);
  EXPECT_EQ(e1["error"]["param"], "tokens[1]");
  const auto [unsupported, e2] = post("/tokenize", {{"content", "x"}, {"parse_special", false}});
  EXPECT_EQ(unsupported, 400);
  EXPECT_EQ(e2["error"]["param"], "parse_special");
  const auto [missing, e3] = post("/tokenize", OrderedJson::object());
  EXPECT_EQ(missing, 400);
  EXPECT_EQ(e3["error"]["param"], "content");
}

TEST_F(ServerTest, SigtermDuringAStreamExitsCleanly) {
  ServerProcess own("-m " + model() + " --port 0 --parallel 1 --ctx-size 2048 -t 1",
                    *dir_ / "own.log");
  ASSERT_GT(own.port(), 0) << own.log();
  // A long stream is running when the signal comes: it ends, the process exits 0.
  std::thread client([&] {
    httplib::Client http("127.0.0.1", own.port());
    http.set_read_timeout(60);
    std::string got;
    http.Post("/v1/completions", httplib::Headers{},
              R"({"prompt": "Once", "max_tokens": 2000, "temperature": 0, "stream": true})",
              "application/json");
  });
  // Wait until it generates.
  httplib::Client probe("127.0.0.1", own.port());
  for (int i = 0; i < 600; ++i) {
    const httplib::Result m = probe.Get("/metrics");
    if (m && m->body.find("dsv3_kv_slots_in_use 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(own.Stop(), 0) << own.log();
  client.join();
  EXPECT_THAT(own.log(), HasSubstr("shutting down"));
  EXPECT_THAT(own.log(), HasSubstr("server stopped"));
  // The model name defaults to the folder's name.
  EXPECT_THAT(own.log(), HasSubstr("serving m on http://127.0.0.1:"));
}

// A checkpoint with an MTP layer is served with drafts (--draft 2): greedy chat answers, whole and
// streamed, equal `dsv3 generate`'s, and /metrics counts the drafts.
TEST_F(ServerTest, MtpDraftsServeWhatGenerateGives) {
  const std::string mtp = *dir_ / "mtp";
  const RunResult synth =
      RunCommand(Cmd("synth --no-progress --preset tiny --seed 5 --tokenizer " + TokDir() +
                     " --set hidden_size=64 --set num_nextn_predict_layers=1 -o " + mtp));
  ASSERT_EQ(synth.status, 0) << synth.output();
  ServerProcess own("-m " + mtp + " --port 0 --parallel 2 --ctx-size 256 -t 1 --draft 2",
                    *dir_ / "mtp.log");
  ASSERT_GT(own.port(), 0) << own.log();
  EXPECT_THAT(own.log(), HasSubstr("MTP draft 2"));
  const RunResult gen = RunCommand(Cmd("generate -m " + mtp + " -t 1 -n 16 -p 'Hello!'"));
  ASSERT_EQ(gen.status, 0) << gen.output();
  const std::string want = gen.out.substr(0, gen.out.size() - 1);
  httplib::Client http("127.0.0.1", own.port());
  http.set_read_timeout(60);
  const std::string body =
      R"({"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16, "temperature": 0)";
  const httplib::Result whole = http.Post("/v1/chat/completions", body + "}", "application/json");
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  EXPECT_EQ(OrderedJson::parse(whole->body)["choices"][0]["message"]["content"], want);
  const httplib::Result stream =
      http.Post("/v1/chat/completions", body + R"(, "stream": true})", "application/json");
  ASSERT_TRUE(stream);
  std::string content;
  for (size_t pos = 0; (pos = stream->body.find("data: {", pos)) != std::string::npos;) {
    const size_t end = stream->body.find("\n\n", pos);
    const OrderedJson delta =
        OrderedJson::parse(stream->body.substr(pos + 6, end - pos - 6))["choices"][0]["delta"];
    if (delta.contains("content")) content += delta["content"];
    pos = end;
  }
  EXPECT_EQ(content, want);
  const httplib::Result metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  const std::smatch m = [&] {
    std::smatch found;
    std::regex_search(metrics->body, found, std::regex("dsv3_drafts_proposed_total ([0-9]+)"));
    return found;
  }();
  ASSERT_EQ(m.size(), 2u) << metrics->body;
  EXPECT_GT(std::stoll(m[1].str()), 0) << metrics->body;
}

// An R1-style chat template (the generation prompt opens <think>): the answer goes to
// reasoning_content until </think>, in whole responses and in stream deltas.
TEST_F(ServerTest, ThinkingGoesToReasoningContent) {
  const std::string r1 = *dir_ / "r1";
  fs::copy(model(), r1, fs::copy_options::recursive);
  OrderedJson config = OrderedJson::parse(ReadFile(r1 + "/tokenizer_config.json"));
  std::string tmpl = config["chat_template"];
  const std::string open = "{{'<｜Assistant｜>'}}";
  const size_t at = tmpl.rfind(open);
  ASSERT_NE(at, std::string::npos);
  tmpl.replace(at, open.size(), "{{'<｜Assistant｜><think>\n'}}");
  config["chat_template"] = tmpl;
  test::WriteFile(r1 + "/tokenizer_config.json", config.dump());
  ServerProcess own("-m " + r1 + " --port 0 --parallel 2 --ctx-size 256 -t 1", *dir_ / "r1.log");
  ASSERT_GT(own.port(), 0) << own.log();
  const RunResult gen = RunCommand(Cmd("generate -m " + r1 + " -t 1 -n 12 -p 'Hello!'"));
  ASSERT_EQ(gen.status, 0) << gen.output();
  const std::string thought = gen.out.substr(0, gen.out.size() - 1);
  ASSERT_EQ(thought.find("</think>"), std::string::npos);

  httplib::Client http("127.0.0.1", own.port());
  http.set_read_timeout(60);
  const std::string body =
      R"({"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 12, "temperature": 0)";
  const httplib::Result whole = http.Post("/v1/chat/completions", body + "}", "application/json");
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  const OrderedJson message = OrderedJson::parse(whole->body)["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], thought);
  EXPECT_EQ(message["content"], "");

  const httplib::Result stream =
      http.Post("/v1/chat/completions", body + R"(, "stream": true})", "application/json");
  ASSERT_TRUE(stream);
  ASSERT_EQ(stream->status, 200) << stream->body;
  EXPECT_EQ(stream->get_header_value("Content-Type"), "text/event-stream");
  std::string reasoning, content;
  size_t events = 0;
  for (size_t pos = 0; (pos = stream->body.find("data: ", pos)) != std::string::npos; ++events) {
    const size_t end = stream->body.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos);
    const std::string data = stream->body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") {
      EXPECT_EQ(end + 2, stream->body.size());  // the last event
      continue;
    }
    const OrderedJson delta = OrderedJson::parse(data)["choices"][0]["delta"];
    if (delta.contains("reasoning_content")) reasoning += delta["reasoning_content"];
    if (delta.contains("content")) content += delta["content"];
  }
  EXPECT_GT(events, 3u);
  EXPECT_EQ(reasoning, thought);
  EXPECT_EQ(content, "");
}

TEST_F(ServerTest, BadCommandLinesAreCleanErrors) {
  test::ExpectCleanError(RunCommand(Cmd("serve -m /nonexistent --port 0")), "/nonexistent");
  test::ExpectCleanError(RunCommand(Cmd("serve -m " + model() + " --port 0 --ctx-size 999999")),
                         "--ctx-size 999999 exceeds max_position_embeddings");
}

}  // namespace
}  // namespace dsv3
