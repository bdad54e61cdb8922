#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/unicode.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_fields.h"

namespace dsv3 {
namespace fs = std::filesystem;
namespace {

int32_t IdField(const Json& j, const std::string& what) {
  if (!j.is_number_integer() || j.get<int64_t>() < 0 || j.get<int64_t>() > INT32_MAX) {
    Fail("{}: expected a token id (a non-negative integer), got {}", what, j.dump());
  }
  return j.get<int32_t>();
}

// The model's vocab and merges are byte-level strings; the decoder turns a token into the bytes
// its characters stand for, or into its own UTF-8 when a character is outside the alphabet
// (as the ByteLevel decoder of the Hugging Face library does, also for added tokens).
std::string DecodedBytes(const std::string& token) {
  std::string bytes;
  return ByteLevelToBytes(token, &bytes) ? bytes : token;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::Load(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) file = (fs::path(path) / "tokenizer.json").string();
  if (!fs::is_regular_file(file, ec)) {
    Fail("{}: no such file (expected a tokenizer.json file or a folder holding one)", file);
  }
  const fs::path config_path = fs::path(file).parent_path() / "tokenizer_config.json";
  TokenizerConfig config;
  if (fs::is_regular_file(config_path, ec)) config = TokenizerConfig::Load(config_path.string());
  return FromJson(ReadJsonFile(file, kMaxTokenizerJsonBytes), file, std::move(config));
}

std::unique_ptr<Tokenizer> Tokenizer::FromJson(const Json& j, const std::string& what,
                                               TokenizerConfig config) {
  if (!j.is_object()) Fail("{}: expected a JSON object", what);
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  t->source_ = what;
  t->config_ = std::move(config);

  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const Json& n = j["normalizer"];
    const bool empty_sequence = ComponentType(n) == "Sequence" && n.contains("normalizers") &&
                                n["normalizers"].is_array() && n["normalizers"].empty();
    if (!empty_sequence) {
      Fail("{}: normalizer: type '{}' is not supported (only none or an empty Sequence)", what,
           ComponentType(n));
    }
  }
  if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null()) {
    Fail("{}: pre_tokenizer: missing; a byte-level tokenizer needs a ByteLevel pre-tokenizer",
         what);
  }
  t->pre_tokenizer_ = PreTokenizer::FromJson(j["pre_tokenizer"], what + ": pre_tokenizer");
  if (!j.contains("model")) Fail("{}: model: missing", what);
  t->LoadModel(j["model"], what + ": model");
  t->LoadAddedTokens(j.contains("added_tokens") ? j["added_tokens"] : Json::array(),
                     what + ": added_tokens");
  const Json decoder = j.contains("decoder") ? j["decoder"] : Json();
  if (ComponentType(decoder) != "ByteLevel") {
    Fail("{}: decoder: type '{}' is not supported (only ByteLevel)", what,
         decoder.is_null() ? "null" : ComponentType(decoder));
  }

  const TokenizerConfig& c = t->config_;
  if (c.bos_token) t->bos_id_ = t->TokenToId(*c.bos_token);
  if (c.eos_token) t->eos_id_ = t->TokenToId(*c.eos_token);
  if (c.bos_eos_from_config) {
    // transformers replaces the post-processor by "BOS? $A EOS?".
    if (c.add_bos_token) {
      if (!t->bos_id_) {
        Fail("{}: add_bos_token is true but bos_token {} is not in the vocabulary", c.path,
             c.bos_token ? "'" + *c.bos_token + "'" : "(none)");
      }
      t->prefix_.push_back(*t->bos_id_);
    }
    if (c.add_eos_token) {
      if (!t->eos_id_) {
        Fail("{}: add_eos_token is true but eos_token {} is not in the vocabulary", c.path,
             c.eos_token ? "'" + *c.eos_token + "'" : "(none)");
      }
      t->suffix_.push_back(*t->eos_id_);
    }
  } else if (j.contains("post_processor")) {
    t->LoadPostProcessor(j["post_processor"], what + ": post_processor");
  }
  return t;
}

void Tokenizer::LoadModel(const Json& m, const std::string& what) {
  if (!m.is_object()) Fail("{}: expected an object", what);
  if (ComponentType(m) != "BPE")
    Fail("{}.type: '{}' is not supported (only BPE)", what, ComponentType(m));
  if (m.contains("dropout") && !m["dropout"].is_null() &&
      !(m["dropout"].is_number() && m["dropout"].get<double>() == 0)) {
    Fail("{}.dropout: BPE dropout is not supported", what);
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() &&
        !(m[key].is_string() && m[key].get<std::string>().empty())) {
      Fail("{}.{}: not supported for byte-level BPE", what, key);
    }
  }
  ignore_merges_ = OptionalBool(m, "ignore_merges", false, what);
  if (!m.contains("vocab") || !m["vocab"].is_object()) {
    Fail("{}.vocab: expected an object mapping tokens to ids", what);
  }
  const Json& vocab = m["vocab"];
  model_entries_ = static_cast<int64_t>(vocab.size());
  token_to_id_.reserve(vocab.size() + 1024);
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = IdField(it.value(), fmt::format("{}.vocab[\"{}\"]", what, it.key()));
    token_to_id_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  bytes_.assign(static_cast<size_t>(max_id + 1), std::string());
  valid_.assign(bytes_.size(), 0);
  special_.assign(bytes_.size(), 0);
  for (const auto& [token, id] : token_to_id_) {
    bytes_[id] = DecodedBytes(token);
    valid_[id] = 1;
    if (ignore_merges_) bytes_to_id_[bytes_[id]] = id;
  }

  std::array<int32_t, 256> byte_ids;
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id_.find(BytesToByteLevel(std::string(1, static_cast<char>(b))));
    if (it == token_to_id_.end()) {
      Fail("{}.vocab: byte 0x{:02X} has no token; not a byte-level BPE vocabulary", what, b);
    }
    byte_ids[b] = it->second;
  }

  if (!m.contains("merges") || !m["merges"].is_array()) Fail("{}.merges: expected an array", what);
  const Json& merges = m["merges"];
  std::vector<BpeMerge> list;
  list.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const Json& e = merges[i];
    std::string left, right;
    if (e.is_string()) {  // "left right"
      const std::string s = e.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        Fail("{}.merges[{}]: '{}' is not two tokens separated by one space", what, i, s);
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get<std::string>();
      right = e[1].get<std::string>();
    } else {
      Fail("{}.merges[{}]: expected \"left right\" or [\"left\", \"right\"]", what, i);
    }
    auto l = token_to_id_.find(left), r = token_to_id_.find(right),
         lr = token_to_id_.find(left + right);
    if (l == token_to_id_.end() || r == token_to_id_.end() || lr == token_to_id_.end()) {
      Fail("{}.merges[{}]: '{} {}': {} is not in the vocabulary", what, i, left, right,
           l == token_to_id_.end()   ? "'" + left + "'"
           : r == token_to_id_.end() ? "'" + right + "'"
                                     : "the merged token '" + left + right + "'");
    }
    list.push_back(BpeMerge{l->second, r->second, lr->second});
  }
  bpe_ = std::make_unique<BpeModel>(byte_ids, list);
}

void Tokenizer::LoadAddedTokens(const Json& added, const std::string& what) {
  if (!added.is_array()) Fail("{}: expected an array", what);
  // The Hugging Face library ignores the stored ids and numbers added tokens itself: a token
  // already in the vocabulary keeps its id, a new one gets the next id after the vocabulary and
  // the added tokens before it. A file whose ids disagree would encode differently there, so
  // it is refused.
  int64_t max_added = -1;
  for (size_t i = 0; i < added.size(); ++i) {
    const Json& a = added[i];
    const std::string where = fmt::format("{}[{}]", what, i);
    if (!a.is_object() || !a.contains("content") || !a["content"].is_string() ||
        a["content"].get<std::string>().empty()) {
      Fail("{}: expected an object with a non-empty \"content\" string", where);
    }
    if (!a.contains("id")) Fail("{}.id: missing", where);
    const int32_t id = IdField(a["id"], where + ".id");
    const std::string content = a["content"].get<std::string>();
    if (OptionalBool(a, "single_word", false, where))
      Fail("{}.single_word: true is not supported", where);
    const bool lstrip = OptionalBool(a, "lstrip", false, where);
    const bool rstrip = OptionalBool(a, "rstrip", false, where);
    const bool normalized = OptionalBool(a, "normalized", true, where);
    auto known = token_to_id_.find(content);
    const int64_t expected = known != token_to_id_.end()   ? known->second
                             : max_added >= model_entries_ ? max_added + 1
                                                           : model_entries_;
    if (id != expected) {
      Fail(
          "{}: '{}' has id {}, but the Hugging Face library gives it id {} (added tokens take "
          "the ids after the vocabulary, in order)",
          where, content, id, expected);
    }
    max_added = std::max<int64_t>(max_added, id);
    if (id >= vocab_size()) {
      bytes_.resize(static_cast<size_t>(id) + 1);
      valid_.resize(bytes_.size(), 0);
      special_.resize(bytes_.size(), 0);
    }
    bytes_[id] = DecodedBytes(content);
    valid_[id] = 1;
    special_[id] = OptionalBool(a, "special", false, where);
    token_to_id_[content] = id;
    (normalized ? normalized_added_ : raw_added_).Add(content, id, lstrip, rstrip);
  }
}

void Tokenizer::LoadPostProcessor(const Json& j, const std::string& what) {
  const std::string type = ComponentType(j);
  if (j.is_null() || type == "ByteLevel") return;  // adds nothing to the ids
  if (type == "Sequence") {
    if (!j.contains("processors") || !j["processors"].is_array()) {
      Fail("{}.processors: expected an array", what);
    }
    for (size_t i = 0; i < j["processors"].size(); ++i) {
      LoadPostProcessor(j["processors"][i], fmt::format("{}.processors[{}]", what, i));
    }
    return;
  }
  if (type != "TemplateProcessing") {
    Fail("{}: type '{}' is not supported (ByteLevel, TemplateProcessing or a Sequence of them)",
         what, type);
  }
  // "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}, ...]
  if (!j.contains("single") || !j["single"].is_array()) Fail("{}.single: expected an array", what);
  bool seen_sequence = false;
  for (const Json& piece : j["single"]) {
    if (piece.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!piece.contains("SpecialToken") || !piece["SpecialToken"].contains("id")) {
      Fail("{}.single: expected SpecialToken or Sequence entries", what);
    }
    const Json& name = piece["SpecialToken"]["id"];
    const Json& specials = j.contains("special_tokens") ? j["special_tokens"] : Json();
    if (!name.is_string() || !specials.is_object() || !specials.contains(name.get<std::string>()) ||
        !specials[name.get<std::string>()].contains("ids")) {
      Fail("{}.special_tokens: no entry with ids for {}", what, name.dump());
    }
    for (const Json& id : specials[name.get<std::string>()]["ids"]) {
      (seen_sequence ? suffix_ : prefix_).push_back(IdField(id, what + ".special_tokens"));
    }
  }
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

void Tokenizer::CheckId(int32_t id) const {
  if (!IsValidId(id)) {
    Fail("token id {} is not in the vocabulary of {} (ids 0..{})", id, source_, vocab_size() - 1);
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids = prefix_;
  EncodeTo(text, &ids);
  if (add_special_tokens) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

void Tokenizer::EncodeTo(std::string_view text, std::vector<int32_t>* out) const {
  if (text.size() > kMaxEncodeBytes) {
    Fail("text to encode is {} bytes, more than the limit of {} bytes", text.size(),
         kMaxEncodeBytes);
  }
  const size_t bad = FindInvalidUtf8(text);
  if (bad != std::string_view::npos) {
    Fail("text to encode is not valid UTF-8: byte 0x{:02X} at offset {} of {}",
         static_cast<uint8_t>(text[bad]), bad, text.size());
  }
  // Tokens with normalized = false are found in the raw text, then tokens with normalized =
  // true in the gaps between them (the normalizer is the identity), then the rest is
  // pre-tokenized and merged.
  AddedTokenMatcher::Match m;
  size_t pos = 0;
  while (pos < text.size() && raw_added_.Find(text, pos, &m)) {
    std::string_view gap = text.substr(pos, m.begin - pos);
    size_t gpos = 0;
    AddedTokenMatcher::Match n;
    while (gpos < gap.size() && normalized_added_.Find(gap, gpos, &n)) {
      EncodeSegment(gap.substr(gpos, n.begin - gpos), out);
      out->push_back(n.id);
      gpos = n.end;
    }
    EncodeSegment(gap.substr(gpos), out);
    out->push_back(m.id);
    pos = m.end;
  }
  std::string_view rest = text.substr(pos);
  size_t gpos = 0;
  while (gpos < rest.size() && normalized_added_.Find(rest, gpos, &m)) {
    EncodeSegment(rest.substr(gpos, m.begin - gpos), out);
    out->push_back(m.id);
    gpos = m.end;
  }
  EncodeSegment(rest.substr(gpos), out);
}

void Tokenizer::EncodeSegment(std::string_view text, std::vector<int32_t>* out) const {
  if (text.empty()) return;
  thread_local std::vector<std::string_view> pieces;
  pieces.clear();
  pre_tokenizer_->Split(text, &pieces);
  for (std::string_view piece : pieces) {
    if (ignore_merges_) {
      auto it = bytes_to_id_.find(std::string(piece));
      if (it != bytes_to_id_.end()) {
        out->push_back(it->second);
        continue;
      }
    }
    bpe_->Encode(piece, out);
  }
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    CheckId(id);
    if (skip_special_tokens && special_[id]) continue;
    bytes += bytes_[id];
  }
  std::string text;
  text.reserve(bytes.size());
  AppendUtf8Lossy(bytes, &text, /*final=*/true);
  return text;
}

std::string StreamDecoder::Push(int32_t id) {
  tokenizer_.CheckId(id);
  std::string text;
  if (skip_special_ && tokenizer_.IsSpecial(id)) return text;
  pending_ += tokenizer_.TokenBytes(id);
  const size_t used = AppendUtf8Lossy(pending_, &text, /*final=*/false);
  pending_.erase(0, used);
  return text;
}

std::string StreamDecoder::Finish() {
  std::string text;
  AppendUtf8Lossy(pending_, &text, /*final=*/true);
  pending_.clear();
  return text;
}

}  // namespace dsv3
