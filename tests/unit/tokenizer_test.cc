// The tokenizer against Hugging Face: every encode and decode case of the DeepSeek-V3 test data
// (ids, ids with BOS, decoded text), streaming decode, a small hand-built tokenizer.json whose
// expected ids came from the Hugging Face `tokenizers` library (npm package 0.23.2), the regex
// rewrite for PCRE2, clear errors on bad input, and a fuzz test.
#include "tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/unicode.h"
#include "tests/test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"

namespace dsv3 {
namespace {

using ::testing::HasSubstr;

std::string DataDir() { return test::TestData("tokenizer/deepseek_v3"); }

// The DeepSeek-V3 tokenizer, loaded once for the whole test binary.
const Tokenizer& DeepSeek() {
  static const std::unique_ptr<Tokenizer> tok = Tokenizer::Load(DataDir());
  return *tok;
}

std::vector<OrderedJson> ReadLines(const std::string& path) {
  std::vector<OrderedJson> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(OrderedJson::parse(line));
  return lines;
}

template <typename F>
void ExpectError(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const std::string& p : parts) EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

TEST(Tokenizer, EveryEncodeCase) {
  DSV3_REQUIRE_DATA(DataDir() + "/encode_cases.jsonl");
  const Tokenizer& tok = DeepSeek();
  const std::vector<OrderedJson> cases = ReadLines(DataDir() + "/encode_cases.jsonl");
  ASSERT_EQ(cases.size(), 356u);
  for (const OrderedJson& c : cases) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(c["category"].get<std::string>() + ": " + text.substr(0, 80));
    const std::vector<int32_t> ids = tok.Encode(text);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(tok.Encode(text, /*add_special_tokens=*/true),
              c["ids_with_bos"].get<std::vector<int32_t>>());
    EXPECT_EQ(tok.Decode(ids), c["decoded"].get<std::string>());
  }
}

TEST(Tokenizer, EveryDecodeCase) {
  DSV3_REQUIRE_DATA(DataDir() + "/decode_cases.jsonl");
  const Tokenizer& tok = DeepSeek();
  for (const OrderedJson& c : ReadLines(DataDir() + "/decode_cases.jsonl")) {
    SCOPED_TRACE(c.dump());
    const std::vector<int32_t> ids = c["ids"].get<std::vector<int32_t>>();
    const bool skip = c["skip_special_tokens"].get<bool>();
    EXPECT_EQ(tok.Decode(ids, skip), c["decoded"].get<std::string>());
    // The streaming decoder gives the same text, in pieces of whole characters.
    StreamDecoder stream(tok, skip);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = stream.Push(id);
      EXPECT_EQ(FindInvalidUtf8(piece), std::string::npos);
      streamed += piece;
    }
    streamed += stream.Finish();
    EXPECT_EQ(streamed, c["decoded"].get<std::string>());
  }
}

TEST(Tokenizer, BosAsTransformersAddsIt) {
  DSV3_REQUIRE_DATA(DataDir());
  const Tokenizer& tok = DeepSeek();
  ASSERT_TRUE(tok.bos_id().has_value());
  EXPECT_EQ(*tok.bos_id(), 0);  // "<｜begin▁of▁sentence｜>", per the test data README
  EXPECT_EQ(*tok.eos_id(), 1);
  EXPECT_TRUE(tok.config().add_bos_token);
  EXPECT_FALSE(tok.config().add_eos_token);
  EXPECT_EQ(tok.Encode("", true), std::vector<int32_t>{0});
  EXPECT_EQ(tok.vocab_size(), 128815);
  EXPECT_TRUE(tok.IsSpecial(0));
  EXPECT_TRUE(tok.IsSpecial(128805));   // <|EOT|>
  EXPECT_FALSE(tok.IsSpecial(128803));  // <｜User｜> is not special
}

// A character split over tokens is held back until complete; nothing is lost or duplicated.
TEST(StreamDecoder, HoldsBackPartialCharacters) {
  DSV3_REQUIRE_DATA(DataDir());
  const Tokenizer& tok = DeepSeek();
  // From decode_cases.jsonl: [28927, 225] is "😀", and 28927 alone is an incomplete prefix.
  StreamDecoder stream(tok, false);
  EXPECT_EQ(stream.Push(28927), "");
  EXPECT_EQ(stream.Push(225), "😀");
  EXPECT_EQ(stream.Finish(), "");
  // An unfinished character at the end comes out as one U+FFFD, as the full decode gives.
  EXPECT_EQ(stream.Push(28927), "");
  EXPECT_EQ(stream.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(stream.Finish(), "");

  // Every encode case, streamed token by token, gives its decoded text in whole characters;
  // at least some cases really split characters across tokens.
  const std::vector<OrderedJson> cases = ReadLines(DataDir() + "/encode_cases.jsonl");
  int split_characters = 0;
  for (const OrderedJson& c : cases) {
    StreamDecoder s(tok, false);
    std::string streamed;
    for (int32_t id : c["ids"].get<std::vector<int32_t>>()) {
      if (FindInvalidUtf8(tok.TokenBytes(id)) != std::string::npos) ++split_characters;
      const std::string piece = s.Push(id);
      ASSERT_EQ(FindInvalidUtf8(piece), std::string::npos);
      if (c["text"].get<std::string>().find("\xEF\xBF\xBD") == std::string::npos) {
        ASSERT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << c["text"];
      }
      streamed += piece;
    }
    streamed += s.Finish();
    EXPECT_EQ(streamed, c["decoded"].get<std::string>());
  }
  EXPECT_GT(split_characters, 50);
}

TEST(StreamDecoder, SkipsSpecialTokensLikeDecode) {
  DSV3_REQUIRE_DATA(DataDir());
  const Tokenizer& tok = DeepSeek();
  // A special token between the bytes of one character: decode joins the bytes around it when
  // it is skipped, and so does the stream.
  const std::vector<int32_t> ids = {28927, 1, 225};
  StreamDecoder stream(tok, true);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.Push(id);
  streamed += stream.Finish();
  EXPECT_EQ(streamed, tok.Decode(ids, true));
  EXPECT_EQ(streamed, "😀");
}

// A tiny byte-level tokenizer.json: 256 byte tokens, merges "a b", "ab c", "Ġ a", added tokens
// with normalized true/false, lstrip/rstrip and overlapping contents, and a TemplateProcessing
// post-processor. The expected ids and texts are the Hugging Face library's (npm tokenizers
// 0.23.2) for this file.
Json SmallTokenizerJson() {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[BytesToByteLevel(std::string(1, static_cast<char>(b)))] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab["Ġa"] = 258;
  auto added = [](int id, const char* content, bool lstrip, bool rstrip, bool normalized,
                  bool special) {
    return Json{{"id", id},          {"content", content}, {"single_word", false},
                {"lstrip", lstrip},  {"rstrip", rstrip},   {"normalized", normalized},
                {"special", special}};
  };
  return Json{
      {"version", "1.0"},
      {"added_tokens",
       {added(259, "bc", false, false, false, true), added(260, "abcd", false, false, true, false),
        added(261, "<x>", true, true, false, true),
        added(262, "<x><y>", false, false, false, false),
        added(233, "é", false, false, true, false)}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<x>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", "bc"}, {"type_id", 0}}}}}},
        {"special_tokens",
         {{"<x>", {{"id", "<x>"}, {"ids", {261}}, {"tokens", {"<x>"}}}},
          {"bc", {{"id", "bc"}, {"ids", {259}}, {"tokens", {"bc"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"vocab", vocab},
        {"merges", {"a b", "ab c", "Ġ a"}}}}};
}

TEST(Tokenizer, AddedTokensAsHuggingFaceMatchesThem) {
  const std::unique_ptr<Tokenizer> tok = Tokenizer::FromJson(SmallTokenizerJson(), "small");
  using Ids = std::vector<int32_t>;
  // normalized=false tokens ("bc") are found before normalized ones ("abcd").
  EXPECT_EQ(tok->Encode("abcd"), (Ids{97, 259, 100}));
  EXPECT_EQ(tok->Encode("xabcdx"), (Ids{120, 97, 259, 100, 120}));
  EXPECT_EQ(tok->Encode("abc"), (Ids{97, 259}));
  // lstrip/rstrip absorb whitespace, Unicode whitespace included (U+0085, U+3000).
  EXPECT_EQ(tok->Encode("a  <x>  b"), (Ids{97, 261, 98}));
  EXPECT_EQ(tok->Encode("a\u0085<x>\u3000b"), (Ids{97, 261, 98}));
  EXPECT_EQ(tok->Encode("a<x>"), (Ids{97, 261}));
  // The longest token at the leftmost position.
  EXPECT_EQ(tok->Encode("<x><y>z"), (Ids{262, 122}));
  // GPT-2's split (ByteLevel use_regex) and the merges.
  EXPECT_EQ(tok->Encode(" ab c"), (Ids{32, 256, 32, 99}));
  EXPECT_EQ(tok->Encode("éa"), (Ids{233, 97}));
  // TemplateProcessing adds its special tokens.
  EXPECT_EQ(tok->Encode("abcd", true), (Ids{261, 97, 259, 100, 259}));
  EXPECT_EQ(tok->Encode("<x><y>z", true), (Ids{261, 262, 122, 259}));
  // Decode: the ByteLevel decoder maps every token, added ones included ("é" is byte 0xE9).
  EXPECT_EQ(tok->Decode(Ids{261, 97, 233, 262}), "<x>a\xEF\xBF\xBD<x><y>");
  EXPECT_EQ(tok->Decode(Ids{261, 97, 233, 262}, true), "a\xEF\xBF\xBD<x><y>");
  EXPECT_EQ(tok->Decode(Ids{259, 98}), "bcb");
  EXPECT_EQ(tok->Decode(Ids{259, 98}, true), "b");
  EXPECT_EQ(tok->Decode(Ids{97, 233, 233, 260}, true),
            "a\xEF\xBF\xBD\xEF\xBF\xBD"
            "abcd");
}

TEST(Tokenizer, BadFilesGiveClearErrors) {
  test::TempDir tmp;
  ExpectError([&] { Tokenizer::Load(tmp / "nope.json"); }, {tmp / "nope.json", "no such file"});
  ExpectError([&] { Tokenizer::Load(tmp.path()); }, {"tokenizer.json", "no such file"});
  test::WriteFile(tmp / "tokenizer.json", "{\"model\": ");
  ExpectError([&] { Tokenizer::Load(tmp.path()); }, {tmp / "tokenizer.json", "invalid JSON"});
  test::WriteFile(tmp / "tokenizer.json", SmallTokenizerJson().dump());
  test::WriteFile(tmp / "tokenizer_config.json", "{\"add_bos_token\": \"yes\"}");
  ExpectError([&] { Tokenizer::Load(tmp.path()); }, {"tokenizer_config.json", "add_bos_token"});
  test::WriteFile(tmp / "tokenizer_config.json", "{\"add_bos_token\": true}");
  ExpectError([&] { Tokenizer::Load(tmp.path()); }, {"add_bos_token is true", "bos_token"});

  auto broken = [](const std::function<void(Json&)>& edit, const std::vector<std::string>& parts) {
    Json j = SmallTokenizerJson();
    edit(j);
    ExpectError([&] { Tokenizer::FromJson(j, "t.json"); }, parts);
  };
  broken([](Json& j) { j["model"]["type"] = "WordPiece"; }, {"t.json: model.type", "WordPiece"});
  broken([](Json& j) { j["model"].erase("merges"); }, {"model.merges"});
  broken([](Json& j) { j["model"]["merges"][1] = "ab zz"; }, {"merges[1]", "'zz'"});
  broken([](Json& j) { j["model"]["merges"][0] = "a b c"; }, {"merges[0]"});
  broken([](Json& j) { j["model"]["vocab"]["x"] = -4; }, {"vocab[\"x\"]", "token id"});
  broken([](Json& j) { j["model"]["vocab"].erase("Ā"); }, {"byte 0x00 has no token"});
  broken([](Json& j) { j["normalizer"] = {{"type", "NFC"}}; }, {"normalizer", "NFC"});
  broken([](Json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }, {"Metaspace"});
  broken([](Json& j) { j["decoder"] = nullptr; }, {"decoder"});
  broken([](Json& j) { j["added_tokens"][0]["id"] = 300; }, {"added_tokens[0]", "id 259"});
  broken([](Json& j) { j["added_tokens"][0]["single_word"] = true; }, {"single_word"});
  broken(
      [](Json& j) {
        j["pre_tokenizer"] = {
            {"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}}, {"behavior", "Isolated"}},
              {{"type", "ByteLevel"}, {"use_regex", false}}}}};
      },
      {"pretokenizers[0].pattern.Regex", "'\\w'", "offset 0"});
}

TEST(Tokenizer, InvalidInputGivesClearErrors) {
  DSV3_REQUIRE_DATA(DataDir());
  const Tokenizer& tok = DeepSeek();
  ExpectError([&] { tok.Encode("abc\xFF"); }, {"not valid UTF-8", "0xFF", "offset 3"});
  ExpectError([&] { tok.Encode("\xE4\xB8"); }, {"not valid UTF-8", "offset 0"});
  ExpectError([&] { tok.Encode("a\xED\xA0\x80"); }, {"offset 1"});  // a surrogate
  ExpectError([&] { tok.Encode("\xC0\xAF"); }, {"offset 0"});       // overlong '/'
  ExpectError(
      [&] {
        tok.Decode(std::vector<int32_t>{5, 128815});
      },
      {"token id 128815 is not in the vocabulary", "ids 0..128814"});
  ExpectError([&] { tok.Decode(std::vector<int32_t>{-1}); }, {"token id -1"});
  StreamDecoder stream(tok);
  ExpectError([&] { stream.Push(1 << 30); }, {"not in the vocabulary"});
}

TEST(Tokenizer, LimitsOnUntrustedInput) {
  DSV3_REQUIRE_DATA(DataDir());
  const Tokenizer& tok = DeepSeek();
  const std::string text(kMaxEncodeBytes + 1, 'a');
  ExpectError([&] { tok.Encode(text); },
              {"text to encode is 67108865 bytes, more than the limit of 67108864 bytes"});
  test::TempDir tmp;
  test::WriteFile(tmp / "tokenizer.json", "{}");
  std::filesystem::resize_file(tmp / "tokenizer.json", kMaxTokenizerJsonBytes + 1);
  ExpectError([&] { Tokenizer::Load(tmp.path()); },
              {tmp / "tokenizer.json", "more than the limit of 134217728 bytes"});
  test::WriteFile(tmp / "tokenizer.json", "{}");
  test::WriteFile(tmp / "tokenizer_config.json", "{}");
  std::filesystem::resize_file(tmp / "tokenizer_config.json", kMaxTokenizerConfigBytes + 1);
  ExpectError([&] { Tokenizer::Load(tmp.path()); },
              {tmp / "tokenizer_config.json", "more than the limit of 67108864 bytes"});
  test::WriteFile(tmp / "tokenizer_config.json", std::string(70, '[') + std::string(70, ']'));
  ExpectError([&] { Tokenizer::Load(tmp.path()); }, {"JSON nested deeper than 64 levels"});
}

TEST(Regex, RewritesWhiteSpaceAsOnigurumaHasIt) {
  // Oniguruma's \s is Unicode White_Space: U+0085 is in it, U+180E and U+FEFF are not.
  const Regex space("\\s+", false, "test");
  size_t b, e;
  EXPECT_TRUE(space.Find("\u0085", 0, &b, &e));
  EXPECT_TRUE(space.Find("\u3000", 0, &b, &e));
  EXPECT_FALSE(space.Find("\u180E", 0, &b, &e));
  EXPECT_FALSE(space.Find("\uFEFF", 0, &b, &e));
  const Regex not_space("[^\\S\\n]+", false, "test");  // \S inside a negated class
  EXPECT_TRUE(not_space.Find("x \u180E", 0, &b, &e));
  EXPECT_EQ(b, 1u);
  EXPECT_EQ(e, 2u);
  const Regex digits("\\p{N}{1,3}", false, "test");
  EXPECT_TRUE(digits.Find("ab½²3x", 0, &b, &e));
  EXPECT_EQ(std::string("ab½²3x").substr(b, e - b), "½²3");
  for (const char* bad : {"\\w", "[[:alpha:]]", "\\p{Han}", "^a", "a$", "[a&&b]", "\\h", "\\b"}) {
    ExpectError([&] { TranslateOnigurumaPattern(bad, "p"); }, {"p: regex construct"});
  }
  ExpectError([&] { Regex("(", false, "p"); }, {"p: regex does not compile"});
}

TEST(Bpe, MergesLowestRankFirstAndLeftmostAmongEqualRanks) {
  std::array<int32_t, 256> bytes;
  for (int b = 0; b < 256; ++b) bytes[b] = b;
  // a=97 b=98 c=99: "a b" -> 300 (rank 0), "b c" -> 301 (rank 1), "300 c" -> 302 (rank 2),
  // "a a" -> 303 (rank 3).
  const BpeModel bpe(bytes, {{97, 98, 300}, {98, 99, 301}, {300, 99, 302}, {97, 97, 303}});
  for (bool heap : {false, true}) {
    auto merge = [&](std::vector<int32_t> ids) {
      bpe.MergeIds(&ids, heap);
      return ids;
    };
    EXPECT_EQ(merge({97, 98, 99}), (std::vector<int32_t>{302}));
    EXPECT_EQ(merge({98, 99, 97}), (std::vector<int32_t>{301, 97}));
    EXPECT_EQ(merge({97, 97, 97}), (std::vector<int32_t>{303, 97}));
    EXPECT_EQ(merge({97, 97, 98}), (std::vector<int32_t>{97, 300}));
    EXPECT_EQ(merge({99}), (std::vector<int32_t>{99}));
  }
}

// The scan used for short words and the priority queue used for long ones agree.
TEST(Bpe, ScanAndHeapAgree) {
  std::array<int32_t, 256> bytes;
  for (int b = 0; b < 256; ++b) bytes[b] = b;
  std::mt19937 rng(7);
  std::vector<BpeMerge> merges;
  std::vector<int32_t> alphabet = {0, 1, 2, 3};
  for (int32_t next = 256; next < 400; ++next) {
    const int32_t l = alphabet[rng() % alphabet.size()], r = alphabet[rng() % alphabet.size()];
    merges.push_back({l, r, next});
    alphabet.push_back(next);
  }
  const BpeModel bpe(bytes, merges);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<int32_t> word(1 + rng() % 80);
    for (int32_t& id : word) id = static_cast<int32_t>(rng() % 4);
    std::vector<int32_t> a = word, b = word;
    bpe.MergeIds(&a, false);
    bpe.MergeIds(&b, true);
    ASSERT_EQ(a, b) << trial;
  }
}

// Random input, fixed seeds, bounded time: no crash, errors only for invalid UTF-8 and bad ids,
// and decode(encode(text)) == text for valid text.
TEST(Tokenizer, Fuzz) {
  DSV3_REQUIRE_DATA(DataDir());
  const Tokenizer& tok = DeepSeek();
  std::mt19937_64 rng(12345);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  // Code points from the ranges that matter to the pre-tokenizer.
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x00, 0x7F},        {0x80, 0x2FF},    {0x300, 0x36F},     {0x370, 0x52F},
      {0x0600, 0x06FF},    {0x0900, 0x097F}, {0x0E00, 0x0E7F},   {0x1680, 0x180E},
      {0x2000, 0x206F},    {0x3000, 0x30FF}, {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},
      {0xE000, 0xF8FF},    {0xFE00, 0xFFFF}, {0x1F300, 0x1FAFF}, {0x20000, 0x2A6DF},
      {0x10FFF0, 0x10FFFF}};
  int valid = 0, invalid = 0;
  for (int i = 0; i < 20000 && std::chrono::steady_clock::now() < deadline; ++i) {
    std::string text;
    if (i % 3 == 0) {  // random bytes
      text.resize(rng() % 64);
      for (char& c : text) c = static_cast<char>(rng());
    } else {  // random valid UTF-8
      const size_t n = rng() % 200;
      for (size_t k = 0; k < n; ++k) {
        const auto& [lo, hi] = ranges[rng() % ranges.size()];
        uint32_t cp = lo + static_cast<uint32_t>(rng() % (hi - lo + 1));
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
        AppendUtf8(cp, &text);
      }
      if (rng() % 4 == 0) text.insert(rng() % (text.size() + 1), "<｜User｜>");
    }
    const bool is_valid = FindInvalidUtf8(text) == std::string::npos;
    try {
      const std::vector<int32_t> ids = tok.Encode(text);
      ASSERT_TRUE(is_valid);
      ASSERT_EQ(tok.Decode(ids), text);
      ++valid;
    } catch (const Error& e) {
      ASSERT_FALSE(is_valid) << e.what();
      ASSERT_THAT(e.what(), HasSubstr("not valid UTF-8"));
      ++invalid;
    }
    // Random ids: in range they decode (to valid UTF-8, streamed the same); out of range they
    // are an error.
    std::vector<int32_t> ids(rng() % 16);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % tok.vocab_size());
    const std::string decoded = tok.Decode(ids, i % 2 == 0);
    ASSERT_EQ(FindInvalidUtf8(decoded), std::string::npos);
    StreamDecoder stream(tok, i % 2 == 0);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Push(id);
    ASSERT_EQ(streamed + stream.Finish(), decoded);
    ids.push_back(static_cast<int32_t>(tok.vocab_size() + rng() % 1000));
    ASSERT_THROW(tok.Decode(ids), Error);
  }
  EXPECT_GT(valid, 100);
  EXPECT_GT(invalid, 100);
}

TEST(Unicode, LossyDecodingReplacesMaximalInvalidSubsequences) {
  // The examples of the Unicode standard (U+FFFD substitution of maximal subparts, table 3-8).
  std::string out;
  AppendUtf8Lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", &out, true);
  EXPECT_EQ(out,
            "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
            "b\xEF\xBF\xBD"
            "c\xEF\xBF\xBD\xEF\xBF\xBD"
            "d");
  out.clear();
  EXPECT_EQ(AppendUtf8Lossy("ab\xE2\x82", &out, false), 2u);  // incomplete: kept for later
  EXPECT_EQ(out, "ab");
}

}  // namespace
}  // namespace dsv3
