// Text generation on a synthetic tiny model with the DeepSeek-V3 tokenizer: stop strings, and a
// chat session that keeps the conversation in the latent cache yet generates exactly what a
// fresh run over the whole rendered conversation generates.
#include "runtime/text_generate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/synth.h"
#include "runtime/speculative.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

TEST(StopMatcher, HoldsBackPossibleStartsOfStopStrings) {
  bool stopped = false;
  StopMatcher m({"END", "\n\n"});
  EXPECT_EQ(m.Push("abc", &stopped), "abc");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.Push("xE", &stopped), "x");  // "E" may start "END"
  EXPECT_EQ(m.Push("N", &stopped), "");
  EXPECT_EQ(m.Push("Dtail", &stopped), "");
  EXPECT_TRUE(stopped);

  StopMatcher n({"END"});
  EXPECT_EQ(n.Push("E", &stopped), "");
  EXPECT_EQ(n.Push("x", &stopped), "Ex");  // not a stop string after all
  EXPECT_EQ(n.Push("abE", &stopped), "ab");
  EXPECT_EQ(n.Flush(), "E");  // the end of generation releases what was held

  StopMatcher u({"é!", ""});  // empty stop strings are ignored
  EXPECT_EQ(u.Push("café", &stopped), "caf");
  EXPECT_EQ(u.Push("?", &stopped), "é?");
  EXPECT_EQ(u.Push("a\n\nb", &stopped), "a\n\nb");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(u.Push("xé!y", &stopped), "x");
  EXPECT_TRUE(stopped);
}

class TextModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string tok_dir = test::TestData("tokenizer/deepseek_v3");
    if (!std::filesystem::exists(tok_dir)) return;
    dir_ = new test::TempDir();
    SynthOptions o;
    o.preset = "tiny";
    o.seed = 11;
    o.progress = false;
    o.out_dir = dir_->path();
    // The tokenizer's 128815 ids; a narrow model keeps the embedding small.
    o.set = {"vocab_size=128815", "hidden_size=64", "num_nextn_predict_layers=0"};
    o.copy_files = {tok_dir + "/tokenizer.json", tok_dir + "/tokenizer_config.json"};
    Synthesize(o);
    model_ = Model::Load(dir_->path()).release();
    tokenizer_ = Tokenizer::Load(dir_->path()).release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete model_;
    delete dir_;
  }
  void SetUp() override { DSV3_REQUIRE_DATA(test::TestData("tokenizer/deepseek_v3")); }

  static TextGenerateOptions Greedy(int64_t n) {
    TextGenerateOptions o;
    o.generate.max_new_tokens = n;
    o.generate.stop_at_eos = false;
    return o;
  }

  static test::TempDir* dir_;
  static Model* model_;
  static Tokenizer* tokenizer_;
};
test::TempDir* TextModel::dir_ = nullptr;
Model* TextModel::model_ = nullptr;
Tokenizer* TextModel::tokenizer_ = nullptr;

TEST_F(TextModel, StopStringEndsTheTextWhereItFirstAppears) {
  const std::vector<int32_t> prompt = tokenizer_->Encode("The quick brown fox", true);
  Context full_ctx(*model_, {64, 64});
  std::string streamed;
  const TextGenerateResult full = GenerateText(full_ctx, *tokenizer_, prompt, Greedy(24),
                                               [&](std::string_view s) { streamed += s; });
  EXPECT_EQ(streamed, full.text);
  EXPECT_EQ(full.tokens.size(), 24u);
  EXPECT_EQ(full.text, tokenizer_->Decode(full.tokens, true));
  ASSERT_GE(full.text.size(), 12u);
  // Pick a stop string from the middle of the text: generation must end right before its
  // first occurrence.
  const size_t cut = full.text.size() / 2;
  size_t at = cut;
  while (at > 0 && (static_cast<uint8_t>(full.text[at]) & 0xC0) == 0x80) --at;
  const std::string stop = full.text.substr(at, std::min<size_t>(4, full.text.size() - at));
  TextGenerateOptions o = Greedy(24);
  o.stop = {stop};
  Context ctx(*model_, {64, 64});
  streamed.clear();
  const TextGenerateResult r =
      GenerateText(ctx, *tokenizer_, prompt, o, [&](std::string_view s) { streamed += s; });
  EXPECT_TRUE(r.stopped_by_string);
  EXPECT_EQ(r.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(streamed, r.text);
  EXPECT_LE(r.tokens.size(), full.tokens.size());
}

TEST_F(TextModel, ChatKeepsTheConversationInTheCache) {
  const ChatTemplate tmpl(tokenizer_->config());
  Context ctx(*model_, {512, 64});
  ChatSession chat(ctx, *tokenizer_, tmpl);
  chat.AddMessage("system", "Be brief.");
  OrderedJson first_turn = chat.messages();
  first_turn.push_back({{"role", "user"}, {"content", "Hello there!"}});
  const size_t first_prompt = tokenizer_->Encode(tmpl.Apply(first_turn, true)).size();
  const TextGenerateOptions o = Greedy(10);
  const TextGenerateResult first = chat.Reply("Hello there!", o, nullptr);
  EXPECT_EQ(chat.reused_tokens(), 0);
  EXPECT_EQ(chat.forwarded_tokens(), static_cast<int64_t>(first_prompt));
  OrderedJson second_turn = chat.messages();
  second_turn.push_back({{"role", "user"}, {"content", "And now?"}});
  std::string streamed;
  const TextGenerateResult second =
      chat.Reply("And now?", o, [&](std::string_view s) { streamed += s; });
  EXPECT_EQ(streamed, second.text);
  const std::vector<int32_t> prompt = tokenizer_->Encode(tmpl.Apply(second_turn, true));
  // Only the new turn ran: the first turn's prompt (and as much of the reply as encodes to the
  // same tokens) came from the cache.
  EXPECT_GE(chat.reused_tokens(), static_cast<int64_t>(first_prompt));
  EXPECT_EQ(chat.reused_tokens() + chat.forwarded_tokens(), static_cast<int64_t>(prompt.size()));
  EXPECT_LT(chat.forwarded_tokens(), static_cast<int64_t>(prompt.size()) / 2);
  // A fresh context over the whole rendered conversation generates the same reply.
  Context fresh(*model_, {512, 64});
  const TextGenerateResult expected = GenerateText(fresh, *tokenizer_, prompt, o, nullptr);
  EXPECT_EQ(second.tokens, expected.tokens);
  EXPECT_EQ(second.text, expected.text);
  ASSERT_EQ(chat.messages().size(), 5u);
  EXPECT_EQ(chat.messages()[2]["content"], first.text);
  EXPECT_EQ(chat.messages()[4]["role"], "assistant");
}

TEST_F(TextModel, ChatFailsCleanlyWhenTheContextIsFull) {
  const ChatTemplate tmpl(tokenizer_->config());
  Context ctx(*model_, {16, 16});
  ChatSession chat(ctx, *tokenizer_, tmpl);
  try {
    chat.Reply(std::string(200, 'x') + " a long message that does not fit", Greedy(4), nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("no longer fits the context of 16 tokens"));
  }
}

}  // namespace
}  // namespace dsv3

namespace dsv3 {
namespace {

// Chat with MTP speculative decoding: the decoder follows the cache across turns (the session
// truncates it to the reused prefix), and greedy replies equal those of a plain session.
TEST(ChatWithMtp, RepliesLikePlainDecodingTurnAfterTurn) {
  const std::string tok_dir = test::TestData("tokenizer/deepseek_v3");
  DSV3_REQUIRE_DATA(tok_dir);
  test::TempDir dir;
  SynthOptions so;
  so.preset = "tiny";
  so.seed = 3;
  so.progress = false;
  so.out_dir = dir.path();
  so.set = {"vocab_size=128815", "hidden_size=64"};  // keeps the MTP layer
  so.copy_files = {tok_dir + "/tokenizer.json", tok_dir + "/tokenizer_config.json"};
  Synthesize(so);
  const std::unique_ptr<Model> model = Model::Load(dir.path());
  ASSERT_FALSE(model->mtp().empty());
  const std::unique_ptr<Tokenizer> tok = Tokenizer::Load(dir.path());
  const ChatTemplate tmpl(tok->config());
  const ContextOptions o{512, 64, AttentionImpl::kAuto};
  Context plain_ctx(*model, o), spec_ctx(*model, o);
  SpeculativeDecoder spec(*model, o, 2);
  ChatSession plain(plain_ctx, *tok, tmpl), fast(spec_ctx, *tok, tmpl, &spec);
  TextGenerateOptions g;
  g.generate.max_new_tokens = 12;
  g.generate.stop_at_eos = false;
  for (const char* user : {"Hello!", "Tell me more.", "Thanks."}) {
    const TextGenerateResult a = plain.Reply(user, g, nullptr);
    const TextGenerateResult b = fast.Reply(user, g, nullptr);
    EXPECT_EQ(a.tokens, b.tokens) << user;
    EXPECT_EQ(a.text, b.text) << user;
    EXPECT_TRUE(spec.InSync(spec_ctx)) << user;
    EXPECT_EQ(b.stats.drafts_checked.size(), 2u);
    EXPECT_GT(b.stats.drafts_checked[0], 0);
    EXPECT_EQ(fast.reused_tokens(), plain.reused_tokens());
  }
}

}  // namespace
}  // namespace dsv3
