#include "tokenizer/bpe.h"

#include <atomic>
#include <climits>
#include <queue>
#include <string>
#include <unordered_map>

namespace dsv3 {
namespace {

// Words longer than this merge with a priority queue; shorter ones rescan the pair ranks, which
// is faster for the few symbols of a typical word.
constexpr size_t kHeapThreshold = 48;
// Words longer than this are not cached; the cache is dropped when it reaches kCacheEntries.
constexpr size_t kMaxCachedWord = 128;
constexpr size_t kCacheEntries = 1 << 16;

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
};

// Recent words of one thread, with their tokens.
struct WordCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
};

WordCache& ThreadCache(uint64_t owner) {
  thread_local WordCache cache;
  if (cache.owner != owner) {
    cache.words.clear();
    cache.owner = owner;
  }
  return cache;
}

std::atomic<uint64_t> next_serial{1};

}  // namespace

BpeModel::BpeModel(const std::array<int32_t, 256>& byte_ids, const std::vector<BpeMerge>& merges)
    : byte_ids_(byte_ids), serial_(next_serial.fetch_add(1)) {
  size_t size = 16;
  while (size < merges.size() * 2) size *= 2;
  table_.assign(size, Entry{kEmpty, 0, 0});
  shift_ = 64 - __builtin_ctzll(size);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const BpeMerge& m = merges[rank];
    const uint64_t key = PairKey(m.left, m.right);
    size_t slot = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    while (table_[slot].key != kEmpty && table_[slot].key != key) slot = (slot + 1) & (size - 1);
    table_[slot] = Entry{key, static_cast<int32_t>(rank), m.merged};
  }
}

const BpeModel::Entry* BpeModel::Find(int32_t left, int32_t right) const {
  const uint64_t key = PairKey(left, right);
  const size_t mask = table_.size() - 1;
  for (size_t slot = (key * 0x9E3779B97F4A7C15ull) >> shift_;; slot = (slot + 1) & mask) {
    const Entry& e = table_[slot];
    if (e.key == key) return &e;
    if (e.key == kEmpty) return nullptr;
  }
}

void BpeModel::MergeScan(std::vector<int32_t>* ids_ptr) const {
  std::vector<int32_t>& ids = *ids_ptr;
  // rank[i], merged[i]: the merge of the pair (ids[i], ids[i + 1]); INT_MAX when none.
  int32_t rank[kHeapThreshold], merged[kHeapThreshold];
  size_t n = ids.size();
  auto set_pair = [&](size_t i) {
    const Entry* e = Find(ids[i], ids[i + 1]);
    rank[i] = e ? e->rank : INT_MAX;
    merged[i] = e ? e->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) set_pair(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (rank[i] < rank[best]) best = i;
    }
    if (rank[best] == INT_MAX) break;
    ids[best] = merged[best];
    // Remove symbol best + 1 and pair best; the pairs on either side change.
    for (size_t i = best + 1; i + 1 < n; ++i) ids[i] = ids[i + 1];
    for (size_t i = best; i + 2 < n; ++i) {
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0) set_pair(best - 1);
    if (best + 1 < n) set_pair(best);
  }
  ids.resize(n);
}

void BpeModel::MergeHeap(std::vector<int32_t>* ids_ptr) const {
  std::vector<int32_t>& ids = *ids_ptr;
  const int n = static_cast<int>(ids.size());
  // A doubly linked list over the symbols; merged-away symbols get id -1.
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank, pos, merged;
    bool operator<(const Candidate& o) const {  // priority_queue pops the largest: invert
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const Entry* e = Find(ids[pos], ids[next[pos]])) queue.push({e->rank, pos, e->merged});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const int right = next[top.pos];
    if (ids[top.pos] < 0 || right < 0) continue;
    // A stale candidate: one of its symbols has been merged since it was queued. (The merged
    // token of the current pair is then longer than the queued one, so ids differ.)
    const Entry* e = Find(ids[top.pos], ids[right]);
    if (e == nullptr || e->merged != top.merged) continue;
    ids[top.pos] = top.merged;
    ids[right] = -1;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    push(prev[top.pos]);
    push(top.pos);
  }
  size_t out = 0;
  for (int i = 0; i < n; ++i) {
    if (ids[i] >= 0) ids[out++] = ids[i];
  }
  ids.resize(out);
}

void BpeModel::MergeIds(std::vector<int32_t>* ids, bool use_heap) const {
  if (use_heap || ids->size() > kHeapThreshold) {
    MergeHeap(ids);
  } else {
    MergeScan(ids);
  }
}

void BpeModel::Encode(std::string_view word, std::vector<int32_t>* out) const {
  if (word.size() == 1) {  // one byte: no merge can apply
    const int32_t id = byte_ids_[static_cast<unsigned char>(word[0])];
    if (id >= 0) out->push_back(id);
    return;
  }
  WordCache* cache = nullptr;
  if (word.size() <= kMaxCachedWord) {
    cache = &ThreadCache(serial_);
    auto it = cache->words.find(word);
    if (it != cache->words.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  thread_local std::vector<int32_t> ids;
  ids.clear();
  for (char c : word) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
    if (id >= 0) ids.push_back(id);
  }
  MergeIds(&ids, /*use_heap=*/false);
  out->insert(out->end(), ids.begin(), ids.end());
  if (cache != nullptr) {
    if (cache->words.size() >= kCacheEntries) cache->words.clear();
    cache->words.emplace(std::string(word), ids);
  }
}

}  // namespace dsv3
