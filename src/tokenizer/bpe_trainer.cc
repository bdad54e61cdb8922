#include "tokenizer/bpe_trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <filesystem>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "core/unicode.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsv3 {
namespace fs = std::filesystem;
namespace {

// DeepSeek-V3's tokenizer.json "pre_tokenizer", verbatim (the CJK ranges as \u escapes): digits
// in groups of up to three, runs of CJK ideographs and kana, then words, punctuation and
// whitespace.
constexpr const char* kDeepSeekV3PreTokenizer = R"json({
  "type": "Sequence",
  "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"Regex": "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"},
     "behavior": "Isolated", "invert": false},
    {"type": "Split",
     "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
  ]
})json";

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Where a chunk of `text` may end at or after `from`: just after a newline that is followed by an
// ASCII letter. No match of DeepSeek-V3's pre-tokenizer holds both (the word patterns exclude
// newlines before their letters, the punctuation and whitespace patterns hold no letters), and
// no lookaround reaches across, so pieces never straddle the cut.
size_t ChunkEnd(std::string_view text, size_t from) {
  for (size_t nl = text.find('\n', from == 0 ? 0 : from - 1); nl != std::string_view::npos;
       nl = text.find('\n', nl + 1)) {
    if (nl + 1 >= text.size()) break;
    const unsigned char c = static_cast<unsigned char>(text[nl + 1]);
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return nl + 1;
  }
  return text.size();
}

using WordCounts = std::unordered_map<std::string_view, int64_t>;

// The pieces of `text` between special tokens, cut further into chunks of about chunk_bytes.
std::vector<std::string_view> Chunks(std::string_view text,
                                     const std::vector<std::string>& specials, size_t chunk_bytes) {
  AddedTokenMatcher matcher;
  for (size_t i = 0; i < specials.size(); ++i) {
    matcher.Add(specials[i], static_cast<int32_t>(i), /*lstrip=*/false, /*rstrip=*/false);
  }
  std::vector<std::string_view> segments;
  size_t pos = 0;
  AddedTokenMatcher::Match m;
  while (pos < text.size() && matcher.Find(text, pos, &m)) {
    if (m.begin > pos) segments.push_back(text.substr(pos, m.begin - pos));
    pos = m.end;
  }
  if (pos < text.size()) segments.push_back(text.substr(pos));
  std::vector<std::string_view> chunks;
  for (std::string_view s : segments) {
    size_t begin = 0;
    while (begin < s.size()) {
      const size_t end =
          s.size() - begin > chunk_bytes ? ChunkEnd(s, begin + chunk_bytes) : s.size();
      chunks.push_back(s.substr(begin, end - begin));
      begin = end;
    }
  }
  return chunks;
}

// The merge loop over unique words. Word w's symbols are symbols_[start_[w] .. start_[w] +
// length_[w]); a merge rewrites them in place.
class Merger {
 public:
  Merger(const std::vector<std::pair<std::string_view, int64_t>>& words, int32_t first_byte_id) {
    size_t total = 0;
    for (const auto& [word, count] : words) total += word.size();
    symbols_.reserve(total);
    for (const auto& [word, count] : words) {
      if (word.size() > INT32_MAX)
        Fail("a pre-tokenized word of {} bytes is too long", word.size());
      start_.push_back(symbols_.size());
      length_.push_back(static_cast<int32_t>(word.size()));
      count_.push_back(count);
      for (char c : word) symbols_.push_back(first_byte_id + static_cast<unsigned char>(c));
    }
    for (int32_t w = 0; w < static_cast<int32_t>(count_.size()); ++w) {
      const int32_t* s = &symbols_[start_[w]];
      for (int32_t i = 0; i + 1 < length_[w]; ++i) Add(s[i], s[i + 1], count_[w], w);
    }
    for (const auto& [key, stat] : pairs_) Push(key, stat.count);
    increased_.clear();
  }

  // The most frequent pair (ties: smaller left id, then smaller right id) that `allowed` accepts,
  // or false when no pair is left. Pairs refused by `allowed` are never offered again.
  template <typename Allowed>
  bool Best(int32_t* left, int32_t* right, Allowed&& allowed) {
    while (!heap_.empty()) {
      const Candidate top = heap_.top();
      heap_.pop();
      const uint64_t key = PairKey(top.left, top.right);
      auto it = pairs_.find(key);
      const int64_t count = it == pairs_.end() ? 0 : it->second.count;
      if (count <= 0 || refused_.count(key) > 0) continue;
      if (count != top.count) {  // counts changed since it was queued: queue it again
        Push(key, count);
        continue;
      }
      if (!allowed(top.left, top.right)) {
        refused_.insert(key);
        continue;
      }
      *left = top.left;
      *right = top.right;
      return true;
    }
    return false;
  }

  // Replaces every occurrence of (left, right), left to right, by `merged` and updates the counts
  // of the pairs around each occurrence.
  void Merge(int32_t left, int32_t right, int32_t merged) {
    const uint64_t key = PairKey(left, right);
    std::vector<int32_t> words = std::move(pairs_[key].words);
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    for (int32_t w : words) {
      int32_t* s = &symbols_[start_[w]];
      const int32_t n = length_[w];
      const int64_t c = count_[w];
      int32_t out = 0;
      for (int32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == left && s[i + 1] == right) {
          // prev (left right) next -> prev (merged) next; prev is the output so far, which may
          // itself be a merged token of this pass.
          if (out > 0) {
            Add(s[out - 1], left, -c, w);
            Add(s[out - 1], merged, c, w);
          }
          if (i + 2 < n) {
            Add(right, s[i + 2], -c, w);
            Add(merged, s[i + 2], c, w);
          }
          Add(left, right, -c, w);
          s[out++] = merged;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      length_[w] = out;
    }
    pairs_.erase(key);
    for (uint64_t k : increased_) {
      auto it = pairs_.find(k);
      if (it != pairs_.end() && it->second.count > 0) Push(k, it->second.count);
    }
    increased_.clear();
  }

 private:
  struct PairStat {
    int64_t count = 0;
    std::vector<int32_t> words;  // words that held the pair when it was counted up (may repeat)
  };
  struct Candidate {
    int64_t count;
    int32_t left, right;
    bool operator<(const Candidate& o) const {  // priority_queue pops the largest
      if (count != o.count) return count < o.count;
      if (left != o.left) return left > o.left;
      return right > o.right;
    }
  };

  void Add(int32_t left, int32_t right, int64_t delta, int32_t word) {
    const uint64_t key = PairKey(left, right);
    PairStat& p = pairs_[key];
    p.count += delta;
    if (delta > 0) {
      if (p.words.empty() || p.words.back() != word) p.words.push_back(word);
      increased_.insert(key);
    }
  }
  void Push(uint64_t key, int64_t count) {
    heap_.push(Candidate{count, static_cast<int32_t>(key >> 32), static_cast<int32_t>(key)});
  }

  std::vector<int32_t> symbols_;
  std::vector<size_t> start_;
  std::vector<int32_t> length_;
  std::vector<int64_t> count_;
  std::unordered_map<uint64_t, PairStat> pairs_;
  std::priority_queue<Candidate> heap_;
  std::unordered_set<uint64_t> increased_, refused_;
};

void CheckSpecials(const std::vector<std::string>& specials) {
  std::unordered_set<std::string> seen;
  for (const std::string& s : specials) {
    if (s.empty()) Fail("special token: empty; a special token needs text");
    const size_t bad = FindInvalidUtf8(s);
    if (bad != std::string::npos) {
      Fail("special token '{}': not valid UTF-8 (byte 0x{:02X} at offset {})", s,
           static_cast<uint8_t>(s[bad]), bad);
    }
    if (!seen.insert(s).second) Fail("special token '{}': given twice", s);
    std::string bytes;
    if (ByteLevelToBytes(s, &bytes) && bytes.size() == 1) {
      Fail(
          "special token '{}': spells the byte token of 0x{:02X} in the byte-level alphabet; "
          "choose another",
          s, static_cast<uint8_t>(bytes[0]));
    }
  }
}

// The chat template: "User: ...\n\nAssistant: ...<eos>" turns after an optional system text, as
// DeepSeek's early chat models wrote them, starting with BOS when the tokenizer has one of its
// own.
std::string ChatTemplateFor(const SpecialTokens& s) {
  return std::string(s.add_bos ? "{{ bos_token }}" : "") +
         "{% for message in messages %}"
         "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
         "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n\n"
         "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}"
         "{{ eos_token }}"
         "{% else %}{{ raise_exception('unknown role: ' ~ message['role']) }}{% endif %}"
         "{% endfor %}"
         "{% if add_generation_prompt %}Assistant:{% endif %}";
}

}  // namespace

Json DeepSeekV3PreTokenizerJson() { return Json::parse(kDeepSeekV3PreTokenizer); }

SpecialTokens ResolveSpecialTokens(const std::vector<std::string>& given) {
  CheckSpecials(given);
  SpecialTokens s;
  if (std::find(given.begin(), given.end(), kEndOfText) != given.end()) {
    s.tokens = given;
    s.bos = s.eos = kEndOfText;
    return s;
  }
  s.bos = kDeepSeekBos;
  s.eos = kDeepSeekEos;
  s.add_bos = true;
  for (const char* t : {kDeepSeekBos, kDeepSeekEos}) {
    if (std::find(given.begin(), given.end(), t) == given.end()) s.tokens.push_back(t);
  }
  s.tokens.insert(s.tokens.end(), given.begin(), given.end());
  return s;
}

TrainedBpe TrainBpe(std::string_view text, const std::string& what, const BpeTrainerOptions& o) {
  CheckSpecials(o.special_tokens);
  const int64_t k = static_cast<int64_t>(o.special_tokens.size());
  if (o.vocab_size < 256 + k) {
    Fail("vocab size {} is smaller than the 256 byte tokens plus {} special token{} ({})",
         o.vocab_size, k, k == 1 ? "" : "s", 256 + k);
  }
  if (o.vocab_size > INT32_MAX)
    Fail("vocab size {} is too large (at most {})", o.vocab_size, INT32_MAX);
  const size_t bad = FindInvalidUtf8(text);
  if (bad != std::string_view::npos) {
    const size_t line = 1 + std::count(text.begin(), text.begin() + bad, '\n');
    Fail("{}: not valid UTF-8: byte 0x{:02X} at offset {} (line {})", what,
         static_cast<uint8_t>(text[bad]), bad, line);
  }

  TrainedBpe out;
  out.num_special = static_cast<int32_t>(k);
  out.text_bytes = static_cast<int64_t>(text.size());
  for (const std::string& s : o.special_tokens) out.tokens.push_back(s);
  for (int b = 0; b < 256; ++b) out.tokens.push_back(std::string(1, static_cast<char>(b)));

  // Words and their counts: each thread counts its chunks, then the counts are summed.
  const std::vector<std::string_view> chunks =
      Chunks(text, o.special_tokens, std::max<size_t>(o.chunk_bytes, 1));
  const auto pre = PreTokenizer::FromJson(DeepSeekV3PreTokenizerJson(), "pre_tokenizer");
  std::vector<WordCounts> counts(static_cast<size_t>(NumThreads()));
  std::atomic<uint64_t> bytes_done{0};
  Progress words_progress("train-tokenizer: words", text.size(), o.progress);
  uint64_t bytes_shown = 0;
  ParallelFor(static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end, int t) {
    WordCounts& mine = counts[t];
    std::vector<std::string_view> pieces;
    for (int64_t c = begin; c < end; ++c) {
      pieces.clear();
      pre->Split(chunks[c], &pieces);
      for (std::string_view p : pieces) ++mine[p];
      bytes_done += chunks[c].size();
      if (t == 0) {  // the meter is not thread-safe: only the calling thread moves it
        const uint64_t now = bytes_done.load();
        words_progress.Add(now - bytes_shown);
        bytes_shown = now;
      }
    }
  });
  words_progress.Add(text.size() - bytes_shown);
  words_progress.Finish();
  for (size_t t = 1; t < counts.size(); ++t) {
    for (const auto& [word, n] : counts[t]) counts[0][word] += n;
    WordCounts().swap(counts[t]);
  }
  std::vector<std::pair<std::string_view, int64_t>> words(counts[0].begin(), counts[0].end());
  WordCounts().swap(counts[0]);
  std::sort(words.begin(), words.end());  // a fixed order (the result does not depend on it)
  out.unique_words = static_cast<int64_t>(words.size());
  for (const auto& w : words) out.words += w.second;

  // The merges. A merged token that would spell a special token is refused (it could not be
  // told apart from it in the vocabulary).
  std::unordered_set<std::string> special_spellings;  // raw bytes whose spelling is a special
  for (const std::string& s : o.special_tokens) {
    std::string bytes;
    if (ByteLevelToBytes(s, &bytes)) special_spellings.insert(bytes);
  }
  Merger merger(words, out.num_special);
  const int64_t to_learn = o.vocab_size - static_cast<int64_t>(out.tokens.size());
  Progress merge_progress("train-tokenizer: merges", static_cast<uint64_t>(to_learn), o.progress,
                          "merges");
  int32_t left, right;
  while (static_cast<int64_t>(out.tokens.size()) < o.vocab_size &&
         merger.Best(&left, &right, [&](int32_t l, int32_t r) {
           return special_spellings.count(out.tokens[l] + out.tokens[r]) == 0;
         })) {
    // Each merge makes a new token: the merges inside a span that ends as one token depend only
    // on its bytes and the merge order, so no token is made twice from different pairs.
    const int32_t merged = static_cast<int32_t>(out.tokens.size());
    out.tokens.push_back(out.tokens[left] + out.tokens[right]);
    out.merges.push_back(BpeMerge{left, right, merged});
    merger.Merge(left, right, merged);
    merge_progress.Add(1);
  }
  merge_progress.Finish();
  return out;
}

TrainedBpe TrainBpeFromFile(const std::string& path, const BpeTrainerOptions& o) {
  std::error_code ec;
  if (!fs::exists(path, ec)) Fail("{}: no such file (the training text)", path);
  if (fs::is_directory(path, ec)) Fail("{}: is a folder; expected a text file", path);
  const MappedFile file(path);
  if (file.size() == 0) Fail("{}: empty; the training text needs at least one word", path);
  return TrainBpe(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()), path,
                  o);
}

OrderedJson TrainedTokenizerJson(const TrainedBpe& bpe, const SpecialTokens& specials) {
  // Spellings in the byte alphabet; specials are written as their own text.
  std::vector<std::string> spelling(bpe.tokens.size());
  for (size_t id = 0; id < bpe.tokens.size(); ++id) {
    spelling[id] = static_cast<int32_t>(id) < bpe.num_special ? bpe.tokens[id]
                                                              : BytesToByteLevel(bpe.tokens[id]);
  }
  OrderedJson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  OrderedJson added = OrderedJson::array();
  for (int32_t id = 0; id < bpe.num_special; ++id) {
    added.push_back({{"id", id},
                     {"content", bpe.tokens[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  j["added_tokens"] = std::move(added);
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = OrderedJson::parse(kDeepSeekV3PreTokenizer);
  if (specials.add_bos) {
    // BOS before the text (and before each text of a pair), as transformers' Llama tokenizers
    // and DeepSeek-V3's tokenizer_config.json (add_bos_token) do.
    auto special = [&](int type_id) {
      return OrderedJson{{"SpecialToken", {{"id", specials.bos}, {"type_id", type_id}}}};
    };
    auto sequence = [](const char* id, int type_id) {
      return OrderedJson{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
    };
    auto bos = std::find(bpe.tokens.begin(), bpe.tokens.begin() + bpe.num_special, specials.bos);
    if (bos == bpe.tokens.begin() + bpe.num_special) {
      Fail("BOS token '{}' is not among the special tokens", specials.bos);
    }
    const int32_t bos_id = static_cast<int32_t>(bos - bpe.tokens.begin());
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", OrderedJson::array({special(0), sequence("A", 0)})},
        {"pair", OrderedJson::array({special(0), sequence("A", 0), special(1), sequence("B", 1)})},
        {"special_tokens",
         {{specials.bos,
           {{"id", specials.bos},
            {"ids", OrderedJson::array({bos_id})},
            {"tokens", OrderedJson::array({specials.bos})}}}}}};
  } else {
    j["post_processor"] = nullptr;
  }
  j["decoder"] = {{"type", "ByteLevel"},
                  {"add_prefix_space", true},
                  {"trim_offsets", true},
                  {"use_regex", true}};
  // In id order. The spellings are distinct, so they go straight into ordered_json's vector of
  // pairs (its operator[] searches linearly, quadratic for a large vocabulary).
  OrderedJson vocab = OrderedJson::object();
  auto& entries = vocab.get_ref<OrderedJson::object_t&>();
  entries.reserve(spelling.size());
  for (size_t id = 0; id < spelling.size(); ++id) entries.emplace_back(spelling[id], id);
  OrderedJson merges = OrderedJson::array();
  for (const BpeMerge& m : bpe.merges) merges.push_back(spelling[m.left] + " " + spelling[m.right]);
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges)}};
  return j;
}

OrderedJson TrainedTokenizerConfigJson(const SpecialTokens& specials) {
  OrderedJson c;
  c["add_bos_token"] = specials.add_bos;
  c["add_eos_token"] = false;
  c["bos_token"] = specials.bos;
  c["eos_token"] = specials.eos;
  c["pad_token"] = specials.eos;
  c["unk_token"] = nullptr;
  c["clean_up_tokenization_spaces"] = false;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  c["chat_template"] = ChatTemplateFor(specials);
  return c;
}

void CheckOutputDir(const std::string& dir) {
  if (dir.empty()) Fail("output folder: empty path");
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) {
      Fail("{}: exists and is not a folder (the output folder for tokenizer.json)", dir);
    }
    if (access(dir.c_str(), W_OK | X_OK) != 0) Fail("{}: the output folder is not writable", dir);
    return;
  }
  // It will be created: its nearest existing ancestor must be a writable folder.
  fs::path parent = fs::absolute(dir, ec).parent_path();
  while (!parent.empty() && !fs::exists(parent, ec) && parent != parent.parent_path()) {
    parent = parent.parent_path();
  }
  if (!fs::is_directory(parent, ec) || access(parent.c_str(), W_OK | X_OK) != 0) {
    Fail("{}: cannot create the output folder: {} is not a writable folder", dir, parent.string());
  }
}

void WriteTrainedTokenizer(const TrainedBpe& bpe, const SpecialTokens& specials,
                           const std::string& dir) {
  CheckOutputDir(dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) Fail("{}: cannot create the output folder: {}", dir, ec.message());
  WriteFileAtomic((fs::path(dir) / "tokenizer.json").string(),
                  TrainedTokenizerJson(bpe, specials).dump(2) + "\n");
  WriteFileAtomic((fs::path(dir) / "tokenizer_config.json").string(),
                  TrainedTokenizerConfigJson(specials).dump(2) + "\n");
}

}  // namespace dsv3
