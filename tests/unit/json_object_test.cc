// Structured output (json_object, the schema {"type": "object"}): the byte-level JSON
// recognizer on free objects, the shortest closing it counts, and the token mask over the real
// DeepSeek-V3 vocabulary sampling random "models" into answers that all parse as objects within
// their token budget.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <random>

#include "core/json.h"
#include "runtime/json_schema.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

// json_object's schema: any object.
const JsonSchema* AnyObject() {
  static const std::shared_ptr<const JsonSchema> schema =
      std::get<std::shared_ptr<const JsonSchema>>(CompileJsonSchema(Json{{"type", "object"}}));
  return schema.get();
}
std::shared_ptr<const JsonSchema> AnyObjectShared() {
  return std::get<std::shared_ptr<const JsonSchema>>(CompileJsonSchema(Json{{"type", "object"}}));
}

bool Valid(std::string_view prefix) {
  SchemaPrefix p(AnyObject());
  return p.Feed(prefix);
}

TEST(JsonObjectPrefix, AcceptsPrefixesOfObjectsOnly) {
  for (const char* ok :
       {"", " ", "{", "{}", " {\n\"a\" : 1 }", R"({"a": [1, -2.5e+3, 0, true, false, null]})",
        R"({"k": {"x": {}}, "l": [[], [{}]]})", R"({"s": "\u00e9\n\"\\\/"})",
        "{\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\": 0}", R"({"a": 0.)", R"({"a": -)", R"({"a": tr)",
        "{\"a\": \"\xe2\x82", R"({"a": 1e)", R"({"a":1,)"}) {
    EXPECT_TRUE(Valid(ok)) << ok;
  }
  for (const char* bad : {"[",
                          "1",
                          "\"s\"",
                          "{1",
                          "{\"a\" 1}",
                          "{\"a\": 01}",
                          "{\"a\": 1.}",
                          "{\"a\": .5}",
                          "{\"a\": -}",
                          "{\"a\": +1}",
                          "{\"a\": tru}",
                          "{\"a\": True}",
                          "{\"a\":1,}",
                          "{\"a\":[1,]}",
                          "{\"a\": [}",
                          "{\"a\": 1]",
                          "{}x",
                          "{} {}",
                          "{\"a\": \"\x01\"}",
                          "{\"a\": \"\\x\"}",
                          "{\"a\": \"\\u12g4\"}",
                          "{\"\xc0\xaf\": 1}",
                          "{\"\xed\xa0\x80\": 1}",
                          "{\"\xff\": 1}",
                          "{\"a\": 1e+}",
                          "{'a': 1}"}) {
    EXPECT_FALSE(Valid(bad)) << bad;
  }
  SchemaPrefix p(AnyObject());
  EXPECT_TRUE(p.Feed("{\"a\": [1, 2]} \n"));
  EXPECT_TRUE(p.complete());
  SchemaPrefix deep(AnyObject());
  std::string nest = "{\"a\":";
  for (int i = 1; i < SchemaPrefix::kMaxDepth; ++i) nest += "[";
  EXPECT_TRUE(deep.Feed(nest));
  EXPECT_FALSE(deep.Feed("["));  // one more than kMaxDepth
}

// The fewest bytes that close the object, by hand, and that appending them does close it.
TEST(JsonObjectPrefix, CountsTheShortestClosing) {
  const struct {
    const char* prefix;
    const char* closing;
  } cases[] = {
      {"", "{}"},
      {"{", "}"},
      {"{\"ab", "\":0}"},
      {"{\"a\"", ":0}"},
      {"{\"a\":", "0}"},
      {"{\"a\": [", "]}"},
      {"{\"a\": [1,", "0]}"},
      {"{\"a\": 1,", "\"\":0}"},
      {"{\"a\": -", "0}"},
      {"{\"a\": 1.", "0}"},
      {"{\"a\": 1e-", "0}"},
      {"{\"a\": 12", "}"},
      {"{\"a\": fa", "lse}"},
      {"{\"a\": \"x\\", "n\"}"},
      {"{\"a\": \"\\u12", "34\"}"},
      {"{\"a\": \"\xe2\x82", "\xac\"}"},
      {"{\"a\": {\"b\": [{", "}]}}"},
      {"{}", ""},
  };
  for (const auto& c : cases) {
    SchemaPrefix p(AnyObject());
    ASSERT_TRUE(p.Feed(c.prefix)) << c.prefix;
    EXPECT_EQ(p.ClosingBytes(), static_cast<int64_t>(std::string_view(c.closing).size()))
        << c.prefix;
    EXPECT_TRUE(p.Feed(c.closing)) << c.prefix << c.closing;
    EXPECT_TRUE(p.complete()) << c.prefix << c.closing;
  }
}

class JsonMaskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = test::TestData("tokenizer/deepseek_v3");
    DSV3_REQUIRE_DATA(dir + "/tokenizer.json");
    tok_ = Tokenizer::Load(dir);
    V_ = tok_->vocab_size() + 16;  // a model vocabulary with ids the tokenizer lacks
    vocabulary_ = std::make_shared<SchemaVocabulary>(*tok_, V_, std::vector<int32_t>{eos()});
  }
  JsonSchemaMask Mask(int64_t max_tokens) const {
    return JsonSchemaMask(vocabulary_, max_tokens, AnyObjectShared());
  }
  std::unique_ptr<Tokenizer> tok_;
  std::shared_ptr<const SchemaVocabulary> vocabulary_;
  int64_t V_ = 0;
  int32_t eos() const { return *tok_->eos_id(); }
};

TEST_F(JsonMaskTest, AllowsExactlyTheTokensThatContinue) {
  JsonSchemaMask mask = Mask(1000);
  for (int32_t id : tok_->Encode("{\"key\":")) mask.Accept(id);
  std::vector<float> logits(static_cast<size_t>(V_), 0.0f);
  mask.Apply(logits.data());
  auto allowed = [&](std::string_view text) {
    const std::vector<int32_t> ids = tok_->Encode(text);
    EXPECT_EQ(ids.size(), 1u) << text;
    return std::isfinite(logits[ids[0]]);
  };
  EXPECT_TRUE(allowed(" "));
  EXPECT_TRUE(allowed("\""));
  EXPECT_TRUE(allowed("1"));
  EXPECT_TRUE(allowed("{"));
  EXPECT_TRUE(allowed(" true"));
  EXPECT_FALSE(allowed("}"));
  EXPECT_FALSE(allowed(","));
  EXPECT_FALSE(allowed("hello"));
  EXPECT_FALSE(std::isfinite(logits[eos()]));
  EXPECT_FALSE(std::isfinite(logits[V_ - 1]));  // not in the tokenizer
  int64_t n = 0;
  for (float l : logits) n += std::isfinite(l);
  EXPECT_GT(n, 100);
  // Once the object is complete only EOS remains.
  for (int32_t id : tok_->Encode(" 1}")) mask.Accept(id);
  std::fill(logits.begin(), logits.end(), 0.0f);
  mask.Apply(logits.data());
  for (int64_t v = 0; v < V_; ++v) EXPECT_EQ(std::isfinite(logits[v]), v == eos()) << v;
}

// Inside a string most tokens are decided without being fed (they change nothing there): the
// mask equals trying every token on a copy of the recognizer, and its cost is printed.
TEST_F(JsonMaskTest, InsideAStringTheMaskEqualsFeedingEveryToken) {
  const std::string prefix = "{\"key\": \"some text \xc3";  // a character split across tokens too
  for (const std::string& p : {prefix.substr(0, prefix.size() - 1), prefix}) {
    JsonSchemaMask mask = Mask(1000);
    SchemaPrefix state(AnyObject());
    ASSERT_TRUE(state.Feed(p));
    for (const char c : p) {  // the ASCII of the prefix byte by byte (one token each)
      if (static_cast<uint8_t>(c) >= 0x80) continue;
      const std::vector<int32_t> ids = tok_->Encode(std::string(1, c));
      ASSERT_EQ(ids.size(), 1u);
      mask.Accept(ids[0]);
    }
    if (p.size() == prefix.size()) {  // feed the lone lead byte as its byte token
      bool fed = false;
      for (int32_t v = 0; v < tok_->vocab_size() && !fed; ++v) {
        if (tok_->IsValidId(v) && tok_->TokenBytes(v) == "\xc3") mask.Accept(v), fed = true;
      }
      ASSERT_TRUE(fed);
    }
    std::vector<float> logits(static_cast<size_t>(V_), 0.0f);
    const auto t0 = std::chrono::steady_clock::now();
    mask.Apply(logits.data());
    const double ms =
        1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t allowed = 0;
    for (int64_t v = 0; v < V_; ++v) {
      const int32_t id = static_cast<int32_t>(v);
      SchemaPrefix next = state;
      const bool want = tok_->IsValidId(id) && !tok_->IsSpecial(id) && id != eos() &&
                        !tok_->TokenBytes(id).empty() && next.Feed(tok_->TokenBytes(id));
      EXPECT_EQ(std::isfinite(logits[v]), want) << "token " << v;
      allowed += want;
    }
    std::printf("json_object mask inside a string%s: %.2f ms, %lld tokens allowed\n",
                p.size() == prefix.size() ? " (mid-character)" : "", ms, (long long)allowed);
  }
}

// Random logits (a model that knows nothing) sampled under the mask: every answer is one JSON
// object followed by EOS, within its token budget; the mask's cost per token is printed.
TEST_F(JsonMaskTest, HundredSampledAnswersAllParse) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(V_)), masked(logits.size());
  double mask_seconds = 0;
  int64_t steps = 0;
  for (int trial = 0; trial < 100; ++trial) {
    const int64_t budget = 3 + trial % 24;
    for (float& l : logits) l = normal(rng);  // this answer's "model"; the draws differ per step
    JsonSchemaMask mask = Mask(budget);
    SamplingParams sp;
    sp.temperature = 1.0f;
    sp.seed = static_cast<uint64_t>(trial);
    Sampler sampler(sp, V_);
    sampler.set_mask(&mask);
    std::string text;
    bool ended = false;
    for (int64_t i = 0; i < budget; ++i) {
      if (trial < 10) {  // the mask alone, timed on a copy
        std::copy(logits.begin(), logits.end(), masked.begin());
        const auto t0 = std::chrono::steady_clock::now();
        mask.Apply(masked.data());
        mask_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ++steps;
      }
      const int32_t id = sampler.Sample(logits.data());
      if (id == eos()) {
        ended = true;
        break;
      }
      text += tok_->TokenBytes(id);
    }
    EXPECT_TRUE(ended) << "budget " << budget << ": " << text;
    Json j;
    EXPECT_NO_THROW(j = Json::parse(text)) << text;
    EXPECT_TRUE(j.is_object()) << text;
  }
  std::printf("json_object mask: %.2f ms per token over %lld tokens (vocab %lld)\n",
              1e3 * mask_seconds / steps, (long long)steps, (long long)V_);
}

}  // namespace
}  // namespace dsv3
