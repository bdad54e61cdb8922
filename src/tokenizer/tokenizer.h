// A Hugging Face byte-level BPE tokenizer read from tokenizer.json (plus tokenizer_config.json
// beside it): added tokens matched first, the regex pre-tokenizer, the BPE model, the BOS/EOS
// rules of transformers, the ByteLevel decoder, and a streaming decoder for generated text.
// Encode and decode give the same ids and text as the Hugging Face `tokenizers` library.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/json.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer_config.h"

namespace dsv3 {

// Limits on untrusted input.
inline constexpr size_t kMaxTokenizerJsonBytes = 128u << 20;  // tokenizer.json (DeepSeek's: 7.8 MB)
inline constexpr size_t kMaxEncodeBytes = 64u << 20;          // one text to encode

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a folder holding one; tokenizer_config.json in the same
  // folder is read when present. Throws dsv3::Error naming the file and field on any problem.
  static std::unique_ptr<Tokenizer> Load(const std::string& path);
  // From parsed tokenizer.json; `what` names it in errors.
  static std::unique_ptr<Tokenizer> FromJson(const Json& j, const std::string& what,
                                             TokenizerConfig config = {});

  // The ids of `text`. add_special_tokens = false is the Hugging Face `tokenizers` encoding
  // (special-token text in `text` still becomes the special token); true adds BOS/EOS as
  // transformers does (tokenizer_config.json's add_bos_token / add_eos_token, else
  // tokenizer.json's post-processor). Invalid UTF-8 is an error naming the byte offset; so is
  // text longer than kMaxEncodeBytes.
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = false) const;
  // Appends the ids of `text` (no BOS/EOS) to `out`.
  void EncodeTo(std::string_view text, std::vector<int32_t>* out) const;

  // The text of `ids`; invalid UTF-8 in the joined bytes becomes U+FFFD per maximal invalid
  // subsequence. skip_special_tokens drops the added tokens flagged "special". Ids outside the
  // vocabulary are an error.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const { return static_cast<int32_t>(bytes_.size()); }  // largest id + 1
  bool IsValidId(int32_t id) const { return id >= 0 && id < vocab_size() && valid_[id]; }
  bool IsSpecial(int32_t id) const { return IsValidId(id) && special_[id]; }
  // The raw bytes the decoder makes of `id` (which must be valid).
  std::string_view TokenBytes(int32_t id) const { return bytes_[id]; }
  // The id of a vocabulary entry or added token, spelled as in tokenizer.json.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // Throws dsv3::Error unless `id` is in the vocabulary.
  void CheckId(int32_t id) const;

  const TokenizerConfig& config() const { return config_; }
  std::optional<int32_t> bos_id() const { return bos_id_; }  // from tokenizer_config.json
  std::optional<int32_t> eos_id() const { return eos_id_; }
  const std::string& source() const { return source_; }  // the tokenizer.json path

 private:
  Tokenizer() = default;
  void LoadModel(const Json& model, const std::string& what);
  void LoadAddedTokens(const Json& added, const std::string& what);
  void LoadPostProcessor(const Json& j, const std::string& what);
  void EncodeSegment(std::string_view text, std::vector<int32_t>* out) const;

  std::string source_;
  TokenizerConfig config_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> bpe_;
  bool ignore_merges_ = false;
  int64_t model_entries_ = 0;  // entries of the model's vocab
  // Added tokens with normalized = false are matched on the raw text first, the others on the
  // normalized gaps between (the normalizer is the identity here).
  AddedTokenMatcher raw_added_, normalized_added_;
  std::unordered_map<std::string, int32_t> token_to_id_;  // vocab and added tokens
  std::unordered_map<std::string, int32_t> bytes_to_id_;  // only with ignore_merges
  std::vector<std::string> bytes_;                        // [vocab_size] decoded bytes per id
  std::vector<uint8_t> valid_, special_;
  std::optional<int32_t> bos_id_, eos_id_;
  std::vector<int32_t> prefix_, suffix_;  // added by Encode(text, true)
};

// Incremental decoding of generated tokens: Push returns the text a token completes, holding
// back the bytes of a UTF-8 character until its last byte arrives, so no half character is
// ever returned and no byte is lost between tokens. The concatenation of all Push results and
// Finish() equals Decode of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  std::string Push(int32_t id);
  // The held-back bytes of an unfinished character, as U+FFFD; resets the decoder.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // at most 3 bytes of an incomplete character
};

}  // namespace dsv3
