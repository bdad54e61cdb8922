// The BPE trainer (src/tokenizer/bpe_trainer.h): merges of tiny corpora computed by hand
// (including the tie-break), merges applied in rank order when encoding, the incremental
// algorithm against a plain one that recounts every pair at every step, the same result for
// any chunk size and thread count, special tokens (first ids, single tokens, never merged
// across), the written files loaded by our tokenizer with every line round-tripping, the
// pre-tokenizer equal to DeepSeek-V3's, and clear errors.
#include "tokenizer/bpe_trainer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>

#include "core/error.h"
#include "core/parallel.h"
#include "tests/test_util.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

BpeTrainerOptions Options(int64_t vocab_size, std::vector<std::string> specials = {}) {
  BpeTrainerOptions o;
  o.vocab_size = vocab_size;
  o.special_tokens = std::move(specials);
  return o;
}

// The merges as "left right" in the byte alphabet, as tokenizer.json writes them.
std::vector<std::string> MergeStrings(const TrainedBpe& bpe) {
  std::vector<std::string> out;
  for (const BpeMerge& m : bpe.merges) {
    out.push_back(BytesToByteLevel(bpe.tokens[m.left]) + " " +
                  BytesToByteLevel(bpe.tokens[m.right]));
  }
  return out;
}

// A tokenizer built from the trained model, as it would be loaded from the written files.
std::unique_ptr<Tokenizer> Load(const TrainedBpe& bpe, const SpecialTokens& s) {
  const Json j = Json::parse(TrainedTokenizerJson(bpe, s).dump());
  const TokenizerConfig c = TokenizerConfig::FromJson(
      Json::parse(TrainedTokenizerConfigJson(s).dump()), "tokenizer_config.json");
  return Tokenizer::FromJson(j, "tokenizer.json", c);
}

// No specials, no BOS: ids are the byte values, then the merges.
SpecialTokens NoSpecials() { return SpecialTokens{{}, "", "", false}; }

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

// Text of many kinds: words of a small syllable set (so merges repeat), capitals, digits,
// punctuation, runs of spaces and tabs, CRLF and blank lines, Latin-1 and other letters with
// combining marks, CJK and kana, emoji. Deterministic for a seed.
std::string MixedText(int lines, uint32_t seed) {
  const std::vector<std::string> syllables = {"ka",  "lo", "mi", "ne", "ru", "sa", "to", "the",
                                              "ing", "er", "qu", "é",  "ñ",  "ü",  "д",  "ж"};
  const std::vector<std::string> others = {
      "123",   "2024", "3.14",   ",",     ".",    "!?",   "...",    "\"quoted\"", "(x)",     "--",
      "  ",    "\t",   "日本語", "かな",  "カタ", "漢字", "😀",      "👍🏽",   "e\u0301", "'s",
      "don't", "#tag", "@you",   "a+b=c", "$5",   "∑",    "\u00a0", "中文",       "x\u200by"};
  std::mt19937 rng(seed);
  std::string text;
  for (int l = 0; l < lines; ++l) {
    const int words = 1 + static_cast<int>(rng() % 12);
    for (int w = 0; w < words; ++w) {
      if (w > 0) text += ' ';
      if (rng() % 5 == 0) {
        text += others[rng() % others.size()];
        continue;
      }
      const int n = 1 + static_cast<int>(rng() % 3);
      std::string word;
      for (int s = 0; s < n; ++s) word += syllables[rng() % syllables.size()];
      if (rng() % 7 == 0) word[0] = static_cast<char>(std::toupper(word[0]));
      text += word;
    }
    switch (rng() % 8) {
      case 0:
        text += "\r\n";
        break;
      case 1:
        text += "\n\n";
        break;
      case 2:
        text += "  \n";
        break;
      default:
        text += "\n";
    }
  }
  return text;
}

// The definition, step by step: count every adjacent pair of every word (times the word's
// count), merge the most frequent (ties: smaller left id, then smaller right id) everywhere,
// left to right, and repeat.
TrainedBpe PlainTrain(std::string_view text, const BpeTrainerOptions& o) {
  TrainedBpe out;
  out.num_special = static_cast<int32_t>(o.special_tokens.size());
  for (const std::string& s : o.special_tokens) out.tokens.push_back(s);
  for (int b = 0; b < 256; ++b) out.tokens.push_back(std::string(1, static_cast<char>(b)));
  // Cut at the specials (leftmost, longest), then pre-tokenize.
  std::vector<std::string_view> segments;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = text.size(), len = 0;
    for (const std::string& s : o.special_tokens) {
      const size_t at = text.find(s, pos);
      if (at < best || (at == best && at != text.size() && s.size() > len)) {
        best = at;
        len = s.size();
      }
    }
    segments.push_back(text.substr(pos, best - pos));
    pos = best + len;
  }
  const auto pre = PreTokenizer::FromJson(DeepSeekV3PreTokenizerJson(), "pre");
  std::map<std::string, int64_t> counts;
  for (std::string_view seg : segments) {
    std::vector<std::string_view> pieces;
    pre->Split(seg, &pieces);
    for (std::string_view p : pieces) ++counts[std::string(p)];
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, n] : counts) {
    std::vector<int32_t> ids;
    for (char c : w) ids.push_back(out.num_special + static_cast<unsigned char>(c));
    words.emplace_back(ids, n);
  }
  while (static_cast<int64_t>(out.tokens.size()) < o.vocab_size) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pairs;
    for (const auto& [ids, n] : words) {
      for (size_t i = 0; i + 1 < ids.size(); ++i) pairs[{ids[i], ids[i + 1]}] += n;
    }
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, n] : pairs) {  // std::map: ascending (left, right)
      if (n > best_count) {
        best = p;
        best_count = n;
      }
    }
    if (best_count == 0) break;
    // (Should a token be made again from another pair, it would keep its id.)
    const std::string bytes = out.tokens[best.first] + out.tokens[best.second];
    auto it = std::find(out.tokens.begin() + out.num_special, out.tokens.end(), bytes);
    const int32_t merged = static_cast<int32_t>(it - out.tokens.begin());
    if (it == out.tokens.end()) out.tokens.push_back(bytes);
    out.merges.push_back(BpeMerge{best.first, best.second, merged});
    for (auto& [ids, n] : words) {
      std::vector<int32_t> next;
      for (size_t i = 0; i < ids.size();) {
        if (i + 1 < ids.size() && ids[i] == best.first && ids[i + 1] == best.second) {
          next.push_back(merged);
          i += 2;
        } else {
          next.push_back(ids[i++]);
        }
      }
      ids = std::move(next);
    }
  }
  return out;
}

// hug x10, pug x5, pun x12, bun x4, hugs x5 (one word per line; the newlines are pieces of
// their own and have no pairs). By hand:
//   pairs: ug 20, pu 17, un 16, hu 15, gs 5, bu 4          -> merge u g
//   h-ug 15, p-ug 5, pu 12, un 16, bu 4, ug-s 5            -> merge u n
//   h-ug 15, p-ug 5, p-un 12, b-un 4, ug-s 5               -> merge h ug
//   p-ug 5, p-un 12, b-un 4, hug-s 5                       -> merge p un
//   p-ug 5, b-un 4, hug-s 5: a tie at 5; p (byte 0x70) has a smaller id than hug (258)
//                                                          -> merge p ug, then hug s, then b un
// and then every word is one token.
std::string HugCorpus() {
  return Repeat("hug\n", 10) + Repeat("pug\n", 5) + Repeat("pun\n", 12) + Repeat("bun\n", 4) +
         Repeat("hugs\n", 5);
}

TEST(BpeTrainer, HandCheckedMergesAndTieBreak) {
  const TrainedBpe bpe = TrainBpe(HugCorpus(), "hug corpus", Options(300));
  EXPECT_THAT(MergeStrings(bpe),
              ElementsAre("u g", "u n", "h ug", "p un", "p ug", "hug s", "b un"));
  // The text ran out of pairs: 256 bytes + 7 merges, not 300.
  ASSERT_EQ(bpe.tokens.size(), 263u);
  EXPECT_EQ(bpe.tokens[256], "ug");
  EXPECT_EQ(bpe.tokens[258], "hug");
  EXPECT_EQ(bpe.tokens[262], "bun");
  EXPECT_EQ(bpe.merges[2].left, 'h');
  EXPECT_EQ(bpe.merges[2].right, 256);
  EXPECT_EQ(bpe.merges[2].merged, 258);
  EXPECT_EQ(bpe.words, 36 + 36);  // 36 words and 36 newlines
  EXPECT_EQ(bpe.unique_words, 6);

  // A vocab size that stops in the middle keeps the first merges.
  const TrainedBpe four = TrainBpe(HugCorpus(), "hug corpus", Options(260));
  EXPECT_THAT(MergeStrings(four), ElementsAre("u g", "u n", "h ug", "p un"));

  // The same through the tokenizer: each word is one token, unseen text still encodes.
  const auto tok = Load(bpe, NoSpecials());
  EXPECT_THAT(tok->Encode("hugs"), ElementsAre(261));
  EXPECT_THAT(tok->Encode("pun bun"), ElementsAre(259, ' ', 262));  // " bun": space, then bun
  EXPECT_EQ(tok->Decode(tok->Encode("hug pug")), "hug pug");
}

// bc x5 then ab x3: merges "b c" (rank 0) then "a b" (rank 1). Encoding "abc" must apply rank 0
// first (a + bc), not the leftmost pair (ab + c); "abcab" gives a, bc, ab.
TEST(BpeTrainer, MergesAreAppliedInRankOrder) {
  const TrainedBpe bpe =
      TrainBpe(Repeat("bc\n", 5) + Repeat("ab\n", 3), "bc ab corpus", Options(258));
  ASSERT_THAT(MergeStrings(bpe), ElementsAre("b c", "a b"));
  const auto tok = Load(bpe, NoSpecials());
  EXPECT_THAT(tok->Encode("abc"), ElementsAre('a', 256));
  EXPECT_THAT(tok->Encode("abcab"), ElementsAre('a', 256, 257));
  EXPECT_THAT(tok->Encode("ab\nbc"), ElementsAre(257, '\n', 256));
}

// Words that repeat a symbol: "aaaa" counts (a, a) three times but merges twice.
TEST(BpeTrainer, OverlappingPairsAreCountedAndMergedLeftToRight) {
  const TrainedBpe bpe = TrainBpe(Repeat("aaaaa\n", 3), "a corpus", Options(259));
  // aaaaa: (a a) x4 per word -> merged left to right: aa aa a, with (aa aa) and (aa a) once
  // each: a tie, and a (97) is a smaller right id than aa (256) -> aa a, giving aa aaa -> aa aaa.
  ASSERT_THAT(MergeStrings(bpe), ElementsAre("a a", "aa a", "aa aaa"));
  const TrainedBpe plain = PlainTrain(Repeat("aaaaa\n", 3), Options(259));
  EXPECT_THAT(MergeStrings(plain), ElementsAre("a a", "aa a", "aa aaa"));
}

void ExpectSameTraining(const TrainedBpe& fast, const TrainedBpe& plain) {
  EXPECT_EQ(fast.tokens, plain.tokens);
  ASSERT_EQ(fast.merges.size(), plain.merges.size());
  for (size_t i = 0; i < fast.merges.size(); ++i) {
    ASSERT_EQ(fast.merges[i].left, plain.merges[i].left) << "merge " << i;
    ASSERT_EQ(fast.merges[i].right, plain.merges[i].right) << "merge " << i;
    ASSERT_EQ(fast.merges[i].merged, plain.merges[i].merged) << "merge " << i;
  }
}

// Random words over two or three letters: many ties and overlapping pairs. Every merge makes a
// new token (the merges inside a span that ends as one token depend only on its bytes and the
// merge order, so no token is made twice from different pairs); the plain trainer would see it.
TEST(BpeTrainer, IncrementalEqualsPlainRecountingOnTinyAlphabets) {
  std::mt19937 rng(1);
  for (int corpus = 0; corpus < 200; ++corpus) {
    const std::string letters = corpus % 2 ? "ab" : "abc";
    std::string text;
    for (int w = 0; w < 30; ++w) {
      std::string word;
      const int n = 1 + static_cast<int>(rng() % 9);
      for (int i = 0; i < n; ++i) word += letters[rng() % letters.size()];
      text += Repeat(word + "\n", 1 + static_cast<int>(rng() % 4));
    }
    const BpeTrainerOptions o = Options(256 + 40);
    const TrainedBpe fast = TrainBpe(text, "tiny", o);
    ExpectSameTraining(fast, PlainTrain(text, o));
    if (HasFailure()) {
      ADD_FAILURE() << "corpus " << corpus << ":\n" << text;
      return;
    }
    EXPECT_EQ(fast.merges.size(), fast.tokens.size() - 256);
  }
}

TEST(BpeTrainer, IncrementalEqualsPlainRecounting) {
  const std::string text = MixedText(600, 7);
  for (const std::vector<std::string>& specials :
       {std::vector<std::string>{}, std::vector<std::string>{"<|endoftext|>", "ka"}}) {
    std::string t = text;
    if (!specials.empty()) {  // sprinkle the specials into the text
      for (size_t at = 500; at < t.size(); at += 997) {
        while (at < t.size() && (static_cast<unsigned char>(t[at]) & 0xC0) == 0x80) ++at;
        t.insert(at, at % 2 ? "<|endoftext|>" : "ka");
      }
    }
    const BpeTrainerOptions o = Options(900, specials);
    const TrainedBpe fast = TrainBpe(t, "mixed text", o);
    const TrainedBpe plain = PlainTrain(t, o);
    ASSERT_EQ(fast.tokens.size(), 900u);
    ExpectSameTraining(fast, plain);
  }
}

TEST(BpeTrainer, SameResultForAnyChunkSizeAndThreadCount) {
  const std::string text = MixedText(2000, 11);
  SetNumThreads(1);
  BpeTrainerOptions o = Options(1200, {"<|endoftext|>"});
  o.chunk_bytes = size_t{1} << 30;
  const TrainedBpe whole = TrainBpe(text, "mixed text", o);
  for (int threads : {1, 2, 4}) {
    for (size_t chunk : {size_t{1}, size_t{7}, size_t{4096}}) {
      SetNumThreads(threads);
      o.chunk_bytes = chunk;
      const TrainedBpe b = TrainBpe(text, "mixed text", o);
      EXPECT_EQ(b.words, whole.words) << threads << " threads, chunks of " << chunk;
      EXPECT_EQ(b.unique_words, whole.unique_words);
      EXPECT_EQ(b.tokens, whole.tokens) << threads << " threads, chunks of " << chunk;
      EXPECT_EQ(MergeStrings(b), MergeStrings(whole));
    }
  }
  SetNumThreads(0);
}

TEST(BpeTrainer, SpecialTokensTakeTheFirstIdsAndAreNeverMergedAcross) {
  // '<', '|' and '>' occur only inside the specials: no learned token may hold them.
  const std::string text = Repeat("xy<|endoftext|>yx<|pad|>xy<|endoftext|>", 40);
  const SpecialTokens s = ResolveSpecialTokens({"<|endoftext|>", "<|pad|>"});
  ASSERT_THAT(s.tokens, ElementsAre("<|endoftext|>", "<|pad|>"));
  EXPECT_EQ(s.bos, "<|endoftext|>");
  EXPECT_EQ(s.eos, "<|endoftext|>");
  EXPECT_FALSE(s.add_bos);
  const TrainedBpe bpe = TrainBpe(text, "specials text", Options(300, s.tokens));
  EXPECT_EQ(bpe.num_special, 2);
  EXPECT_EQ(bpe.tokens[0], "<|endoftext|>");
  EXPECT_EQ(bpe.tokens[1], "<|pad|>");
  EXPECT_EQ(bpe.tokens[2], std::string(1, '\0'));  // bytes follow the specials
  ASSERT_GT(bpe.merges.size(), 0u);
  for (size_t id = 258; id < bpe.tokens.size(); ++id) {
    EXPECT_EQ(bpe.tokens[id].find_first_of("<|>"), std::string::npos) << bpe.tokens[id];
  }
  const auto tok = Load(bpe, s);
  const std::vector<int32_t> ids = tok->Encode("xy<|endoftext|>yx<|pad|>");
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], 0);
  EXPECT_EQ(ids[3], 1);
  EXPECT_TRUE(tok->IsSpecial(0));
  EXPECT_TRUE(tok->IsSpecial(1));
  EXPECT_FALSE(tok->IsSpecial(ids[0]));
  EXPECT_EQ(tok->Decode(ids), "xy<|endoftext|>yx<|pad|>");
  EXPECT_EQ(tok->Decode(ids, /*skip_special_tokens=*/true), "xyyx");
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 0);
  EXPECT_EQ(tok->Encode("xy", true), tok->Encode("xy"));  // GPT-2 style: nothing added
}

// A special spelled in the byte alphabet as other bytes ("Ġthe" spells " the"): the merge that
// would make " the" is refused, so the vocabulary keeps one entry per spelling.
TEST(BpeTrainer, NoMergedTokenSpellsASpecial) {
  const std::string special = "\xc4\xa0the";  // Ġthe
  const TrainedBpe bpe =
      TrainBpe(Repeat("in the park, the end\n", 50), "the text", Options(300, {special}));
  for (size_t id = 1; id < bpe.tokens.size(); ++id) EXPECT_NE(bpe.tokens[id], " the");
  EXPECT_GT(bpe.tokens.size(), 265u);  // other merges went on
  const SpecialTokens s{{special}, special, special, false};
  const auto tok = Load(bpe, s);
  EXPECT_EQ(tok->TokenToId(special), 0);
  EXPECT_EQ(tok->Decode(tok->Encode(" the end")), " the end");
  EXPECT_EQ(tok->Encode(special)[0], 0);
  const Json j = Json::parse(TrainedTokenizerJson(bpe, s).dump());
  EXPECT_EQ(j["model"]["vocab"].size(), bpe.tokens.size());
}

TEST(BpeTrainer, DeepSeekBosEosByDefault) {
  SpecialTokens s = ResolveSpecialTokens({});
  EXPECT_THAT(s.tokens, ElementsAre(kDeepSeekBos, kDeepSeekEos));
  EXPECT_EQ(s.bos, kDeepSeekBos);
  EXPECT_EQ(s.eos, kDeepSeekEos);
  EXPECT_TRUE(s.add_bos);
  // Given ones keep their place; the missing one goes first.
  s = ResolveSpecialTokens({"<tool>", kDeepSeekEos});
  EXPECT_THAT(s.tokens, ElementsAre(kDeepSeekBos, "<tool>", kDeepSeekEos));

  s = ResolveSpecialTokens({"<tool>"});
  const std::string text = MixedText(300, 3) + "<tool>" + MixedText(100, 4);
  const TrainedBpe bpe = TrainBpe(text, "mixed text", Options(700, s.tokens));
  const auto tok = Load(bpe, s);
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->TokenToId("<tool>"), 2);
  const std::vector<int32_t> plain = tok->Encode("ka lo mi");
  std::vector<int32_t> with_bos = {0};
  with_bos.insert(with_bos.end(), plain.begin(), plain.end());
  EXPECT_EQ(tok->Encode("ka lo mi", true), with_bos);

  // The chat template renders with BOS first and EOS after each answer.
  ChatTemplate chat(tok->config());
  const OrderedJson messages = OrderedJson::parse(
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])");
  EXPECT_EQ(chat.Apply(messages, true), std::string(kDeepSeekBos) +
                                            "Be brief.\n\nUser: Hi\n\nAssistant: Hello" +
                                            kDeepSeekEos + "User: Bye\n\nAssistant:");
}

TEST(BpeTrainer, WrittenFilesLoadAndEveryLineRoundTrips) {
  const std::string text = MixedText(3000, 5);
  const SpecialTokens s = ResolveSpecialTokens({"<|endoftext|>"});
  const TrainedBpe bpe = TrainBpe(text, "mixed text", Options(1500, s.tokens));
  ASSERT_EQ(bpe.tokens.size(), 1500u);
  test::TempDir dir;
  const std::string out = dir / "a/b";  // created, parents too
  WriteTrainedTokenizer(bpe, s, out);
  for (const auto& e : fs::directory_iterator(out)) {
    EXPECT_FALSE(e.path().string().ends_with(".tmp")) << e.path();
  }
  const auto tok = Tokenizer::Load(out);
  EXPECT_EQ(tok->vocab_size(), 1500);
  // Lines of the training text and lines never seen (other seeds, other scripts).
  std::string unseen =
      MixedText(500, 99) + "Ωμέγα ثلاثة तीन 🧪🧬 ﬁ Ⅻ \x7f\x01\n";
  size_t lines = 0;
  for (const std::string& t : {text, unseen}) {
    size_t start = 0;
    while (start < t.size()) {
      const size_t end = std::min(t.find('\n', start), t.size());
      const std::string line = t.substr(start, end - start);
      ASSERT_EQ(tok->Decode(tok->Encode(line)), line);
      start = end + 1;
      ++lines;
    }
    EXPECT_EQ(tok->Decode(tok->Encode(t)), t);
  }
  EXPECT_GT(lines, 3400u);
  // The training text needs far fewer tokens than bytes.
  EXPECT_LT(tok->Encode(text).size(), text.size() / 2);
}

TEST(BpeTrainer, PreTokenizerIsDeepSeekV3s) {
  const std::string path = test::TestData("tokenizer/deepseek_v3/tokenizer.json");
  DSV3_REQUIRE_DATA(path);
  const Json deepseek = ReadJsonFile(path, kMaxTokenizerJsonBytes);
  EXPECT_EQ(DeepSeekV3PreTokenizerJson(), deepseek["pre_tokenizer"]);
  const SpecialTokens s = ResolveSpecialTokens({});
  const TrainedBpe bpe = TrainBpe("hello world\n", "t", Options(300, s.tokens));
  const Json ours = Json::parse(TrainedTokenizerJson(bpe, s).dump());
  EXPECT_EQ(ours["pre_tokenizer"], deepseek["pre_tokenizer"]);
  EXPECT_EQ(ours["decoder"], deepseek["decoder"]);
  // Same ids for BOS and EOS as DeepSeek-V3, and the same added-token fields.
  EXPECT_EQ(ours["added_tokens"][0], deepseek["added_tokens"][0]);
  EXPECT_EQ(ours["added_tokens"][1], deepseek["added_tokens"][1]);
}

TEST(BpeTrainer, Errors) {
  auto message = [](const std::function<void()>& f) { return test::ErrorMessage(f); };
  EXPECT_THAT(message([] {
                TrainBpe("abc", "t", Options(257, {"<a>", "<b>"}));
              }),
              HasSubstr("vocab size 257 is smaller than the 256 byte tokens plus 2 special "
                        "tokens (258)"));
  EXPECT_THAT(message([] { TrainBpe("abc", "t", Options(100)); }), HasSubstr("vocab size 100"));
  EXPECT_THAT(message([] { TrainBpe("ok\nline two \xff here", "data.txt", Options(300)); }),
              HasSubstr("data.txt: not valid UTF-8: byte 0xFF at offset 12 (line 2)"));
  EXPECT_THAT(message([] {
                ResolveSpecialTokens({"<a>", "<a>"});
              }),
              HasSubstr("'<a>': given twice"));
  EXPECT_THAT(message([] { ResolveSpecialTokens({""}); }), HasSubstr("empty"));
  EXPECT_THAT(message([] { ResolveSpecialTokens({"\xc3"}); }), HasSubstr("not valid UTF-8"));
  EXPECT_THAT(message([] { ResolveSpecialTokens({"a"}); }),
              HasSubstr("spells the byte token of 0x61"));
  EXPECT_THAT(message([] { ResolveSpecialTokens({"\xc4\xa0"}); }),  // Ġ: the space byte
              HasSubstr("spells the byte token of 0x20"));

  test::TempDir dir;
  EXPECT_THAT(message([&] { TrainBpeFromFile(dir / "missing.txt", Options(300)); }),
              HasSubstr(dir / "missing.txt" + ": no such file"));
  test::WriteFile(dir / "empty.txt", "");
  EXPECT_THAT(message([&] { TrainBpeFromFile(dir / "empty.txt", Options(300)); }),
              HasSubstr(dir / "empty.txt" + ": empty"));
  EXPECT_THAT(message([&] { TrainBpeFromFile(dir.path(), Options(300)); }),
              HasSubstr("is a folder"));
  test::WriteFile(dir / "file", "x");
  EXPECT_THAT(message([&] { CheckOutputDir(dir / "file"); }),
              HasSubstr(dir / "file" + ": exists and is not a folder"));
  EXPECT_THAT(message([&] { CheckOutputDir(dir / "file/sub/deeper"); }),
              HasSubstr(dir / "file/sub/deeper" + ": cannot create the output folder: " +
                        dir / "file" + " is not a writable folder"));
  CheckOutputDir(dir / "new/folder");  // fine, and creates nothing
  EXPECT_FALSE(fs::exists(dir / "new"));
}

}  // namespace
}  // namespace dsv3
