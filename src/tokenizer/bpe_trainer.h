// Training of a byte-level BPE tokenizer of DeepSeek-V3's kind: the text is cut at the special
// tokens (which are never merged across), split by DeepSeek-V3's pre-tokenizer (the same Split
// regexes as its tokenizer.json) into words, and the unique words with their counts are merged
// pair by pair, starting from the 256 bytes, until the vocabulary has the requested size. The
// result is written as a Hugging Face tokenizer.json (BPE model in GPT-2's byte alphabet,
// ByteLevel decoder, the specials as added tokens) and tokenizer_config.json.
//
// Ids: the special tokens first (0..k-1, in the order given), then the 256 bytes in byte order
// (k..k+255), then one id per merge that makes a new token, in the order learned.
//
// Each step merges the pair of adjacent tokens that occurs most often, counting a word once per
// occurrence in the text. Ties go to the pair with the smaller left id, then the smaller right id
// (so older tokens first, bytes by value), which makes training deterministic and independent of
// the thread count. Every merge makes a new token (the merges inside a span that ends as one
// token depend only on its bytes and the merge order, so the same bytes never come from two
// pairs): vocab size = specials + 256 + merges, unless the text runs out of pairs first.
//
// The algorithm is incremental: a count per pair, an index from each pair to the words that
// contain it, and a max-heap of pairs with lazily refreshed counts; a merge rewrites only the
// words that hold the pair and updates the counts of the pairs next to it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "tokenizer/bpe.h"

namespace dsv3 {

// DeepSeek-V3's special tokens, used as BOS/EOS unless <|endoftext|> is among the specials.
// (with U+FF5C FULLWIDTH VERTICAL LINE and U+2581 LOWER ONE EIGHTH BLOCK, as DeepSeek spells them)
inline constexpr const char* kDeepSeekBos = "<｜begin▁of▁sentence｜>";
inline constexpr const char* kDeepSeekEos = "<｜end▁of▁sentence｜>";
// GPT-2's single separator token, then both BOS and EOS.
inline constexpr const char* kEndOfText = "<|endoftext|>";

struct BpeTrainerOptions {
  int64_t vocab_size = 0;                   // specials + 256 bytes + new tokens
  std::vector<std::string> special_tokens;  // ids 0..k-1 in this order
  bool progress = false;                    // a progress line on stderr for long training
  // Work unit of the parallel pre-tokenization: the text is cut only where the pre-tokenizer
  // cannot join across (after a newline, before an ASCII letter), so any size gives the same
  // words.
  size_t chunk_bytes = 1 << 20;
};

struct TrainedBpe {
  int32_t num_special = 0;          // ids 0..num_special-1
  std::vector<std::string> tokens;  // [vocab size] raw bytes per id (specials: their text)
  std::vector<BpeMerge> merges;     // in rank order
  int64_t text_bytes = 0, words = 0, unique_words = 0;
};

// The pre_tokenizer of DeepSeek-V3's tokenizer.json (three Split regexes, then ByteLevel).
Json DeepSeekV3PreTokenizerJson();

// The special tokens of a trained tokenizer and its BOS/EOS: with <|endoftext|> among `given`,
// it is both BOS and EOS and nothing is added to the list; otherwise BOS and EOS are
// DeepSeek-V3's <｜begin▁of▁sentence｜> and <｜end▁of▁sentence｜>, put first in the list (ids 0 and
// 1, as in DeepSeek-V3) unless given, and encode adds BOS (add_bos_token). Empty, invalid UTF-8
// or repeated tokens are an error.
struct SpecialTokens {
  std::vector<std::string> tokens;
  std::string bos, eos;
  bool add_bos = false;
};
SpecialTokens ResolveSpecialTokens(const std::vector<std::string>& given);

// Trains on `text`; `what` names it in errors (invalid UTF-8 is one, naming the byte offset and
// line). Throws dsv3::Error on bad options: a vocab size below 256 + specials, a special token
// that spells a byte token.
TrainedBpe TrainBpe(std::string_view text, const std::string& what, const BpeTrainerOptions& o);
// The same on the contents of `path`; a missing, unreadable or empty file is an error naming it.
TrainedBpe TrainBpeFromFile(const std::string& path, const BpeTrainerOptions& o);

// tokenizer.json and tokenizer_config.json of a trained tokenizer.
OrderedJson TrainedTokenizerJson(const TrainedBpe& bpe, const SpecialTokens& specials);
OrderedJson TrainedTokenizerConfigJson(const SpecialTokens& specials);

// Checks, before any work, that `dir` is a writable folder or can be created as one; an error
// naming it otherwise. Creates nothing.
void CheckOutputDir(const std::string& dir);
// Writes dir/tokenizer.json and dir/tokenizer_config.json, each through a temporary name and a
// rename, creating `dir` (and its parents) if needed.
void WriteTrainedTokenizer(const TrainedBpe& bpe, const SpecialTokens& specials,
                           const std::string& dir);

}  // namespace dsv3
