// Tool calls (src/server/tools.h): the markup found in the DeepSeek-V3 vocabulary, the parser of
// the model's calls in both formats (whole and streamed piece by piece), and the decoding
// constraint sampling random "models" into calls that all parse, name an offered function and
// carry arguments valid for its schema, within their token budget.
#include "server/tools.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "core/json.h"
#include "tests/test_util.h"

namespace dsv3::server {
namespace {

std::string V3Call(const std::string& name, const std::string& args) {
  return fmt::format("{}function{}{}\n```json\n{}\n```{}", kCallBegin, kToolSep, name, args,
                     kCallEnd);
}

TEST(ToolCallParser, ParsesV3AndV31Calls) {
  const std::string text =
      fmt::format("Let me check.{}{}\n{}{}", kCallsBegin,
                  V3Call("get_weather", R"({"city": "Paris"})"), V3Call("time", "{}"), kCallsEnd);
  ToolCallParser p;
  ToolCallParser::Parts a = p.Push(text), b = p.Finish();
  EXPECT_EQ(a.content + b.content, "Let me check.");
  ASSERT_EQ(a.calls.size(), 2u);
  EXPECT_EQ(a.calls[0].name, "get_weather");
  EXPECT_EQ(a.calls[0].arguments, R"({"city": "Paris"})");
  EXPECT_EQ(a.calls[1].name, "time");
  EXPECT_EQ(a.calls[1].arguments, "{}");

  ToolCallParser q;
  const std::string v31 =
      fmt::format("{}{}f{}{{\"x\":1}}{}{}", kCallsBegin, kCallBegin, kToolSep, kCallEnd, kCallsEnd);
  ToolCallParser::Parts c = q.Push(v31), d = q.Finish();
  EXPECT_EQ(c.content + d.content, "");
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].name, "f");
  EXPECT_EQ(c.calls[0].arguments, R"({"x":1})");
}

TEST(ToolCallParser, StreamedByteByByteGivesTheSameParts) {
  const std::string text =
      fmt::format("a <｜tool{}{}{}", kCallsBegin, V3Call("f", R"({"k": [1, 2]})"), kCallsEnd);
  ToolCallParser p;
  std::string content;
  std::vector<ToolCall> calls;
  for (const char c : text) {
    ToolCallParser::Parts part = p.Push(std::string_view(&c, 1));
    // Nothing of the markers is ever shown as content.
    EXPECT_EQ(part.content.find("<｜tool▁"), std::string::npos);
    content += part.content;
    calls.insert(calls.end(), part.calls.begin(), part.calls.end());
  }
  ToolCallParser::Parts last = p.Finish();
  content += last.content;
  EXPECT_EQ(content, "a <｜tool");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].arguments, R"({"k": [1, 2]})");
}

TEST(ToolCallParser, ACallCutShortKeepsWhatItHas) {
  ToolCallParser p;
  const std::string text = fmt::format("Hi{}{}function{}get_weather\n```json\n{{\"ci", kCallsBegin,
                                       kCallBegin, kToolSep);
  ToolCallParser::Parts a = p.Push(text), b = p.Finish();
  EXPECT_EQ(a.content + b.content, "Hi");
  ASSERT_TRUE(a.calls.empty());
  ASSERT_EQ(b.calls.size(), 1u);
  EXPECT_EQ(b.calls[0].name, "get_weather");
  EXPECT_EQ(b.calls[0].arguments, "{\"ci");
  EXPECT_EQ(p.calls(), 1);
  ToolCallParser q;  // no name yet: nothing to return
  ToolCallParser::Parts c = q.Push(std::string(kCallsBegin) + std::string(kCallBegin) + "func"),
                        d = q.Finish();
  EXPECT_EQ(c.content + d.content, "");
  EXPECT_TRUE(c.calls.empty() && d.calls.empty());
}

class ToolMaskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = test::TestData("tokenizer/deepseek_v3");
    DSV3_REQUIRE_DATA(dir + "/tokenizer.json");
    tok_ = Tokenizer::Load(dir);
    V_ = tok_->vocab_size() + 16;
    markup_ = FindToolMarkup(*tok_, tok_->config().chat_template);
    ASSERT_TRUE(markup_.has_value());
    vocabulary_ = std::make_shared<SchemaVocabulary>(*tok_, V_, std::vector<int32_t>{eos()});
  }
  std::shared_ptr<const JsonSchema> Schema(const char* text) {
    auto compiled = CompileJsonSchema(Json::parse(text));
    EXPECT_TRUE(std::holds_alternative<std::shared_ptr<const JsonSchema>>(compiled)) << text;
    return std::get<std::shared_ptr<const JsonSchema>>(compiled);
  }
  // Samples one answer from random logits under a ToolCallMask; returns its text, and whether it
  // ended with EOS.
  std::string Sample(const ToolMarkup& markup, std::shared_ptr<const ToolConstraint> tc,
                     int64_t budget, uint64_t seed, bool* ended,
                     const std::vector<std::pair<int32_t, float>>& bias = {}) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> logits(static_cast<size_t>(V_));
    for (float& l : logits) l = normal(rng);
    ToolCallMask mask(vocabulary_, budget, markup, std::move(tc));
    SamplingParams sp;
    sp.temperature = 1.0f;
    sp.seed = seed;
    sp.logit_bias = bias;
    Sampler sampler(sp, V_);
    sampler.set_mask(&mask);
    std::string text;
    *ended = false;
    for (int64_t i = 0; i < budget; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const int32_t id = sampler.Sample(logits.data());
      seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ++tokens_;
      if (id == eos()) {
        *ended = true;
        break;
      }
      text += tok_->TokenBytes(id);
    }
    return text;
  }
  std::unique_ptr<Tokenizer> tok_;
  int64_t V_ = 0;
  std::optional<ToolMarkup> markup_;
  std::shared_ptr<const SchemaVocabulary> vocabulary_;
  double seconds_ = 0;  // in Sample (mask and sampling), over tokens_ tokens
  int64_t tokens_ = 0;
  int32_t eos() const { return *tok_->eos_id(); }
};

TEST_F(ToolMaskTest, FindsTheMarkupAndTheFormat) {
  EXPECT_EQ(markup_->format, ToolFormat::kV3);  // V3's template fences the arguments
  EXPECT_EQ(tok_->TokenBytes(markup_->calls_begin), kCallsBegin);
  EXPECT_EQ(tok_->TokenBytes(markup_->sep), kToolSep);
  const std::string v31 = "{{'<｜tool▁call▁begin｜>' + name + '<｜tool▁sep｜>' + args}}";
  EXPECT_EQ(FindToolMarkup(*tok_, v31)->format, ToolFormat::kV31);
}

// Required calls: every answer is one block of calls, each naming an offered function with
// arguments valid for its schema, then EOS, within the budget; in both formats, with and without
// parallel calls.
TEST_F(ToolMaskTest, RandomModelsMakeValidCalls) {
  auto tc = std::make_shared<ToolConstraint>();
  tc->mode = ToolConstraint::Mode::kRequired;
  tc->names = {"get_weather", "get_time", "search"};
  tc->parameters = {Schema(R"({"type": "object", "properties": {"city": {"type": "string"},
                 "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]})"),
                    Schema(R"({"type": "object"})"),
                    Schema(R"({"type": "object", "properties": {"q": {"type": "string"},
                 "n": {"type": "integer"}}, "required": ["n"]})")};
  for (const ToolFormat format : {ToolFormat::kV3, ToolFormat::kV31}) {
    for (const bool parallel : {true, false}) {
      ToolMarkup markup = *markup_;
      markup.format = format;
      auto c = std::make_shared<ToolConstraint>(*tc);
      c->parallel = parallel;
      for (int trial = 0; trial < 12; ++trial) {
        const int64_t budget = 40 + 10 * trial;
        bool ended = false;
        const std::string text = Sample(markup, c, budget, 100 * trial + parallel, &ended);
        EXPECT_TRUE(ended) << text;
        if (std::getenv("DSV3_PEEK")) std::printf("%s\n---\n", text.c_str());
        ToolCallParser p;
        ToolCallParser::Parts a = p.Push(text), b = p.Finish();
        EXPECT_EQ(a.content + b.content, "") << text;
        ASSERT_GE(a.calls.size(), 1u) << text;
        if (!parallel) {
          EXPECT_EQ(a.calls.size(), 1u) << text;
        }
        for (const ToolCall& call : a.calls) {
          const auto it = std::find(c->names.begin(), c->names.end(), call.name);
          ASSERT_NE(it, c->names.end()) << text;
          Json args;
          ASSERT_NO_THROW(args = Json::parse(call.arguments)) << text;
          std::string why;
          EXPECT_TRUE(ValidatesJsonSchema(*c->parameters[it - c->names.begin()], args, &why))
              << why << ": " << text;
        }
      }
    }
  }
  std::printf("tool-call mask and sampling: %.2f ms per token over %lld tokens (vocab %lld)\n",
              1e3 * seconds_ / tokens_, static_cast<long long>(tokens_),
              static_cast<long long>(V_));
}

// Auto: free text until the model opens the calls marker (pushed here by a logit bias), then the
// same constraint; "none" never lets the marker through.
TEST_F(ToolMaskTest, AutoConstrainsOnceTheModelCallsAndNoneNeverCalls) {
  auto tc = std::make_shared<ToolConstraint>();
  tc->mode = ToolConstraint::Mode::kAuto;
  tc->names = {"f"};
  tc->parameters = {Schema(R"({"type": "object", "properties": {"a": {"type": "boolean"}},
                               "required": ["a"]})")};
  bool ended = false;
  const std::string text = Sample(*markup_, tc, 60, 3, &ended, {{markup_->calls_begin, 100.0f}});
  EXPECT_TRUE(ended) << text;
  ToolCallParser p;
  ToolCallParser::Parts a = p.Push(text);
  ASSERT_EQ(a.calls.size(), 1u) << text;
  EXPECT_EQ(a.calls[0].name, "f");
  EXPECT_TRUE(Json::parse(a.calls[0].arguments)["a"].is_boolean()) << text;

  auto none = std::make_shared<ToolConstraint>(*tc);
  none->mode = ToolConstraint::Mode::kNone;
  const std::string plain = Sample(*markup_, none, 30, 4, &ended, {{markup_->calls_begin, 100.0f}});
  EXPECT_EQ(plain.find(kCallsBegin), std::string::npos) << plain;
  EXPECT_EQ(plain.find(kCallBegin), std::string::npos) << plain;
}

TEST(ToolPrompt, DescribesTheFunctionsAfterTheSystemMessages) {
  const OrderedJson messages = OrderedJson::parse(
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])");
  const OrderedJson tools = OrderedJson::parse(R"([{"type": "function", "function": {
      "name": "get_weather", "description": "Weather of a city.",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");
  const OrderedJson out = WithToolPrompt(messages, tools, ToolFormat::kV3);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0], messages[0]);
  EXPECT_EQ(out[1]["role"], "system");
  const std::string p = out[1]["content"];
  for (const char* want : {"get_weather", "Weather of a city.", R"("city":{"type":"string"})",
                           "```json", "<｜tool▁calls▁begin｜>"}) {
    EXPECT_NE(p.find(want), std::string::npos) << want << " in " << p;
  }
  EXPECT_EQ(out[2], messages[1]);
}

}  // namespace
}  // namespace dsv3::server
