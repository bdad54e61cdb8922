// The byte-level BPE model: merge ranks keyed by token-id pairs and the merge loop that turns one
// pre-tokenized word (raw bytes) into token ids, with a per-thread cache of recent words.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace dsv3 {

struct BpeMerge {
  int32_t left, right, merged;  // token ids; merges are given in rank order
};

class BpeModel {
 public:
  // byte_ids[b]: the token of the single byte b (-1: none; such bytes are dropped, as the
  // Hugging Face library does without unk_token or byte fallback). A pair listed twice keeps
  // the later rank, as in the Hugging Face library.
  BpeModel(const std::array<int32_t, 256>& byte_ids, const std::vector<BpeMerge>& merges);

  // Appends the tokens of `word` (one piece of the pre-tokenizer, raw bytes) to `out`.
  // Thread-safe.
  void Encode(std::string_view word, std::vector<int32_t>* out) const;

  // The merge loop without the cache, exposed for tests: ids are merged in place, lowest rank
  // first and leftmost among equal ranks. `use_heap` picks the priority-queue variant used for
  // long words instead of the scan used for short ones; both give the same result.
  void MergeIds(std::vector<int32_t>* ids, bool use_heap) const;

 private:
  struct Entry {
    uint64_t key;  // (left << 32) | right; kEmpty marks a free slot
    int32_t rank, merged;
  };
  static constexpr uint64_t kEmpty = ~0ull;
  const Entry* Find(int32_t left, int32_t right) const;
  void MergeScan(std::vector<int32_t>* ids) const;
  void MergeHeap(std::vector<int32_t>* ids) const;

  std::array<int32_t, 256> byte_ids_;
  std::vector<Entry> table_;  // open addressing, linear probing, size a power of two
  int shift_ = 0;             // 64 - log2(table size)
  uint64_t serial_;           // tells this model's cache entries from another model's
};

}  // namespace dsv3
