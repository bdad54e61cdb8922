#include "ep/mpi_group.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "model/model.h"

namespace dsv3::ep {
namespace {

constexpr int64_t kBlock = 128;  // FP8 dispatch: one scale per 128 values (1x128 tiles)

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Adds the wall time of its scope to `seconds`.
class Clock {
 public:
  explicit Clock(double& seconds) : seconds_(seconds), start_(Now()) {}
  ~Clock() { seconds_ += Now() - start_; }

 private:
  double& seconds_;
  double start_;
};

template <typename T>
void Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(std::max(n, v.size() * 2));
}

int CheckedInt(int64_t n, const char* what) {
  if (n > INT32_MAX) Fail("expert parallelism: {} of {} exceed MPI's int counts", what, n);
  return static_cast<int>(n);
}

}  // namespace

const char* ExchangeName(Exchange e) { return e == Exchange::kFp8 ? "fp8" : "f32"; }

bool World::Launched() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr ||
         std::getenv("PMI_RANK") != nullptr;
}

World::World(int* argc, char*** argv) {
  int provided = 0;
  // Rank 0's server runs forward passes on its scheduler thread, not the main one.
  MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

World::~World() { MPI_Finalize(); }

void World::Abort(const std::string& message) const {
  std::fprintf(stderr, "dsv3: error: rank %d of %d: %s\n", rank_, size_, message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

MpiGroup::MpiGroup(const GroupOptions& options) : options_(options) {
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiGroup::~MpiGroup() {
  for (Level& l : levels_) {
    if (l.comm != MPI_COMM_NULL) MPI_Comm_free(&l.comm);
  }
}

void MpiGroup::Prepare(const Config& c) {
  const int64_t E = c.n_routed_experts;
  if (E > 0 && E % size_ != 0) {
    Fail(
        "expert parallelism: {} routed experts cannot be split evenly over {} ranks (use a "
        "number of ranks that divides {})",
        E, size_, E);
  }
  ranks_per_node_ = options_.ranks_per_node > 0 ? options_.ranks_per_node : size_;
  if (size_ % ranks_per_node_ != 0) {
    Fail("expert parallelism: --ranks-per-node {} does not divide the {} ranks", ranks_per_node_,
         size_);
  }
  nodes_ = size_ / ranks_per_node_;
  const bool grouped = c.topk_method != TopkMethod::kGreedy && c.n_group > 1;
  if (nodes_ > 1 && grouped && c.n_group % nodes_ != 0) {
    Fail(
        "expert parallelism: the model's {} expert groups cannot map onto {} nodes (--ranks-per-"
        "node {} of {} ranks); node-limited routing needs n_group to be a multiple of the nodes",
        c.n_group, nodes_, ranks_per_node_, size_);
  }
  config_ = &c;
  D_ = c.hidden_size;
  K_ = c.num_experts_per_tok;
  experts_per_rank_ = std::max<int64_t>(1, E / size_);
  blocks_ = (D_ + kBlock - 1) / kBlock;
  payload_bytes_ = options_.exchange == Exchange::kFp8 ? 4 * blocks_ + (D_ + 3) / 4 * 4 : 4 * D_;
  record_bytes_ = 8 * K_ + payload_bytes_;  // K expert ids, K weights, the token

  for (Level& l : levels_) {
    if (l.comm != MPI_COMM_NULL) MPI_Comm_free(&l.comm);
  }
  levels_.clear();
  if (nodes_ > 1 && ranks_per_node_ > 1) {
    // Level 0: the ranks with this rank's local index, one per node (comm rank = node); level
    // 1: this node's ranks (comm rank = local index).
    levels_.resize(2);
    MPI_Comm_split(MPI_COMM_WORLD, rank_ % ranks_per_node_, rank_, &levels_[0].comm);
    MPI_Comm_split(MPI_COMM_WORLD, NodeOf(rank_), rank_, &levels_[1].comm);
  } else {
    levels_.resize(1);
    MPI_Comm_dup(MPI_COMM_WORLD, &levels_[0].comm);
  }
  for (Level& l : levels_) {
    MPI_Comm_size(l.comm, &l.size);
    MPI_Comm_rank(l.comm, &l.rank);
    l.send_counts.assign(l.size, 0);
    l.recv_counts.assign(l.size, 0);
    for (int i = 0; i < 2; ++i) {
      l.byte_counts[i].assign(l.size, 0);
      l.byte_displs[i].assign(l.size, 0);
    }
  }
  stats_.levels_used = static_cast<int>(levels_.size());
  count_.assign(static_cast<size_t>(experts_per_rank_), 0);
  first_.assign(static_cast<size_t>(experts_per_rank_ + 1), 0);
}

int64_t MpiGroup::partial_bytes() const {
  return options_.exchange == Exchange::kFp8 ? 2 * D_ : 4 * D_;
}

int MpiGroup::DestOf(int level, int64_t expert) const {
  const int owner = ExpertOwner(expert);
  if (levels_.size() == 1) return owner;
  return level == 0 ? NodeOf(owner) : owner % ranks_per_node_;
}

// ---- announcements -------------------------------------------------------------------------

void MpiGroup::Header(int64_t kind, int64_t id, std::initializer_list<int64_t> args) {
  int64_t h[8] = {kind, id};
  std::copy(args.begin(), args.end(), h + 2);
  // Non-blocking, like the followers' Receive (MPI matches the two kinds of broadcast only with
  // their own kind).
  MPI_Request request;
  MPI_Ibcast(h, 8, MPI_INT64_T, 0, MPI_COMM_WORLD, &request);
  MPI_Wait(&request, MPI_STATUS_IGNORE);
}

int64_t MpiGroup::OpenContext(const ContextOptions& o) {
  const int64_t id = next_id_++;
  Header(static_cast<int64_t>(Kind::kOpen), id,
         {o.capacity, o.max_batch, static_cast<int64_t>(o.attention), o.slots,
          static_cast<int64_t>(o.kv_cache), static_cast<int64_t>(o.matmul)});
  return id;
}

void MpiGroup::CloseContext(int64_t id) { Header(static_cast<int64_t>(Kind::kClose), id, {}); }

void MpiGroup::Stop() {
  if (rank_ == 0) Header(static_cast<int64_t>(Kind::kStop), 0, {});
}

void MpiGroup::AnnounceBatch(int64_t id, std::span<const PlannedStep> steps,
                             kernels::MatMulPath path) {
  const int64_t n = static_cast<int64_t>(steps.size());
  int64_t total = 0;
  for (const PlannedStep& s : steps) total += static_cast<int64_t>(s.tokens.size());
  Header(static_cast<int64_t>(Kind::kBatch), id, {n, total, static_cast<int64_t>(path)});
  Grow(step_words_, static_cast<size_t>(3 * n));
  Grow(step_tokens_, static_cast<size_t>(total));
  int64_t t = 0;
  for (int64_t i = 0; i < n; ++i) {
    const PlannedStep& s = steps[i];
    step_words_[3 * i] = s.slot;
    step_words_[3 * i + 1] = s.position;
    step_words_[3 * i + 2] = static_cast<int64_t>(s.tokens.size());
    std::copy(s.tokens.begin(), s.tokens.end(), step_tokens_.begin() + t);
    t += static_cast<int64_t>(s.tokens.size());
  }
  MPI_Bcast(step_words_.data(), CheckedInt(3 * n, "steps"), MPI_INT64_T, 0, MPI_COMM_WORLD);
  MPI_Bcast(step_tokens_.data(), CheckedInt(total, "tokens"), MPI_INT32_T, 0, MPI_COMM_WORLD);
}

void MpiGroup::AnnounceCopyPrefix(int64_t id, int32_t from, int32_t to, int64_t n) {
  Header(static_cast<int64_t>(Kind::kCopyPrefix), id, {from, to, n});
}

void MpiGroup::AnnounceMtp(int64_t k, const kernels::MatMulOptions& matmul) {
  Header(static_cast<int64_t>(Kind::kMtp), 0,
         {k, static_cast<int64_t>(matmul.path), static_cast<int64_t>(matmul.precision)});
}

const MpiGroup::Announcement& MpiGroup::Receive() {
  // Wait without spinning: an idle server's followers would otherwise keep every core busy.
  int64_t h[8];
  MPI_Request request;
  MPI_Ibcast(h, 8, MPI_INT64_T, 0, MPI_COMM_WORLD, &request);
  int done = 0;
  for (int polls = 0;; ++polls) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) break;
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  Announcement& a = announced_;
  a.kind = static_cast<Kind>(h[0]);
  a.id = h[1];
  std::copy(h + 2, h + 8, a.args);
  a.steps.clear();
  if (a.kind == Kind::kBatch) {
    const int64_t n = a.args[0], total = a.args[1];
    Grow(step_words_, static_cast<size_t>(3 * n));
    Grow(step_tokens_, static_cast<size_t>(total));
    MPI_Bcast(step_words_.data(), static_cast<int>(3 * n), MPI_INT64_T, 0, MPI_COMM_WORLD);
    MPI_Bcast(step_tokens_.data(), static_cast<int>(total), MPI_INT32_T, 0, MPI_COMM_WORLD);
    int64_t t = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t count = step_words_[3 * i + 2];
      a.steps.push_back(
          {static_cast<int32_t>(step_words_[3 * i]), step_words_[3 * i + 1],
           std::span<const int32_t>(step_tokens_.data() + t, static_cast<size_t>(count))});
      t += count;
    }
  }
  return a;
}

void MpiGroup::GatherLogits(std::span<const PlannedStep> steps, const float* own, float* logits,
                            int64_t vocab) {
  const int64_t n = static_cast<int64_t>(steps.size());
  logit_counts_.assign(size_, 0);
  for (const PlannedStep& s : steps) ++logit_counts_[SlotOwner(s.slot)];
  if (logit_counts_[0] == n) {  // all rank 0's: no messages
    if (rank_ == 0) std::copy_n(own, n * vocab, logits);
    return;
  }
  logit_displs_.assign(size_, 0);
  for (int r = 0; r < size_; ++r) {
    logit_counts_[r] = CheckedInt(logit_counts_[r] * vocab, "logits");
    if (r > 0) logit_displs_[r] = logit_displs_[r - 1] + logit_counts_[r - 1];
  }
  if (rank_ == 0) Grow(gathered_logits_, static_cast<size_t>(n * vocab));
  MPI_Gatherv(own, logit_counts_[rank_], MPI_FLOAT, gathered_logits_.data(), logit_counts_.data(),
              logit_displs_.data(), MPI_FLOAT, 0, MPI_COMM_WORLD);
  if (rank_ != 0) return;
  // Rank r's rows are its steps in announcement order.
  std::vector<int>& next = logit_counts_;
  std::fill(next.begin(), next.end(), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int r = SlotOwner(steps[i].slot);
    std::copy_n(gathered_logits_.data() + logit_displs_[r] + next[r]++ * vocab, vocab,
                logits + i * vocab);
  }
}

namespace {
double ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  long kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  }
  std::fclose(f);
  return 1024.0 * static_cast<double>(kb);
}
}  // namespace

std::vector<RankFigures> MpiGroup::GatherFigures(const Model& model, bool reset) {
  Header(static_cast<int64_t>(Kind::kFigures), 0, {reset ? 1 : 0});
  return SendFigures(model, reset);
}

std::vector<RankFigures> MpiGroup::SendFigures(const Model& model, bool reset) {
  RankFigures mine;
  mine.held_bytes = static_cast<double>(model.report().main_bytes + model.report().mtp_bytes);
  mine.elsewhere_bytes = static_cast<double>(model.report().elsewhere_bytes);
  mine.rss_bytes = ResidentBytes();
  mine.stats = stats_;
  if (reset) ResetStats();
  std::vector<RankFigures> all(rank_ == 0 ? size_ : 0);
  MPI_Gather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, 0, MPI_COMM_WORLD);
  return all;
}

MpiGroup::Link MpiGroup::MeasureLink(int64_t bytes, int reps) {
  if (size_ < 2) Fail("expert parallelism: measuring a link needs two ranks");
  Header(static_cast<int64_t>(Kind::kLink), 0, {bytes, reps});
  return PingPong(bytes, reps);
}

MpiGroup::Link MpiGroup::PingPong(int64_t bytes, int reps) {
  Link link;
  if (rank_ > 1) return link;
  std::vector<uint8_t> buf(static_cast<size_t>(std::max<int64_t>(bytes, 8)), 1);
  const int peer = 1 - rank_;
  auto round_trips = [&](int64_t n, int count) {
    const double t0 = Now();
    for (int i = 0; i < count; ++i) {
      if (rank_ == 0) {
        SendBytes(peer, buf.data(), static_cast<size_t>(n));
        ReceiveBytes(peer, buf.data(), static_cast<size_t>(n));
      } else {
        ReceiveBytes(peer, buf.data(), static_cast<size_t>(n));
        SendBytes(peer, buf.data(), static_cast<size_t>(n));
      }
    }
    return (Now() - t0) / count / 2;  // one way
  };
  round_trips(bytes, 1);  // warm-up
  link.latency_us = 1e6 * round_trips(8, 200);
  link.gbs = static_cast<double>(bytes) / round_trips(bytes, reps) / 1e9;
  return link;
}

void MpiGroup::SendBytes(int to, const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (size_t off = 0; off < bytes; off += 1 << 30) {
    const int n = static_cast<int>(std::min<size_t>(bytes - off, 1 << 30));
    MPI_Send(p + off, n, MPI_BYTE, to, 7, MPI_COMM_WORLD);
  }
}

void MpiGroup::ReceiveBytes(int from, void* data, size_t bytes) {
  uint8_t* p = static_cast<uint8_t*>(data);
  for (size_t off = 0; off < bytes; off += 1 << 30) {
    const int n = static_cast<int>(std::min<size_t>(bytes - off, 1 << 30));
    MPI_Recv(p + off, n, MPI_BYTE, from, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
}

// ---- the MoE exchange ----------------------------------------------------------------------
// A record: int32 experts[K] (-1: not for this destination), float weights[K], the token
// (float32 [D], or float scales[D / 128] then E4M3 [D]).

void MpiGroup::Encode(const float* x, uint8_t* payload) const {
  if (options_.exchange == Exchange::kF32) {
    std::memcpy(payload, x, 4 * D_);
    return;
  }
  float* scales = reinterpret_cast<float*>(payload);
  uint8_t* q = payload + 4 * blocks_;
  for (int64_t b = 0; b < blocks_; ++b) {
    const int64_t c0 = b * kBlock, c1 = std::min(D_, c0 + kBlock);
    float amax = 0;
    for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[c]));
    const float s = amax > 0 ? amax / 448.0f : 1.0f;
    scales[b] = s;
    for (int64_t c = c0; c < c1; ++c) q[c] = F32ToE4M3(x[c] / s);
  }
}

void MpiGroup::Decode(const uint8_t* payload, float* x) const {
  if (options_.exchange == Exchange::kF32) {
    std::memcpy(x, payload, 4 * D_);
    return;
  }
  const float* scales = reinterpret_cast<const float*>(payload);
  const uint8_t* q = payload + 4 * blocks_;
  for (int64_t c = 0; c < D_; ++c) x[c] = E4M3ToF32(q[c]) * scales[c / kBlock];
}

void MpiGroup::RoutedExperts(const kernels::MatMulOptions& matmul, const MoeWeights& w,
                             int64_t layer, int64_t T, const float* xn, const int32_t* indices,
                             const float* weights, float* out) {
  weights_ = &w;
  matmul_ = matmul;
  ++stats_.exchanges;
  stats_.tokens += T;
  const int64_t rb = record_bytes_;
  Grow(own_records_, static_cast<size_t>(T * rb));
  for (int64_t t = 0; t < T; ++t) {
    uint8_t* r = own_records_.data() + t * rb;
    std::memcpy(r, indices + t * K_, 4 * K_);
    std::memcpy(r + 4 * K_, weights + t * K_, 4 * K_);
    Encode(xn + t * D_, r + 8 * K_);
  }
  Exchange(0, T, own_records_.data(), out);
}

void MpiGroup::AllToAll(Level& L, const std::vector<int>& send, const std::vector<int>& recv,
                        int64_t unit, const uint8_t* out, uint8_t* in, const char* what) {
  std::vector<int>&scount = L.byte_counts[0], &sdispl = L.byte_displs[0];
  std::vector<int>&rcount = L.byte_counts[1], &rdispl = L.byte_displs[1];
  int64_t so = 0, ro = 0;
  for (int d = 0; d < L.size; ++d) {
    scount[d] = CheckedInt(send[d] * unit, what);
    sdispl[d] = CheckedInt(so, what);
    so += scount[d];
    rcount[d] = CheckedInt(recv[d] * unit, what);
    rdispl[d] = CheckedInt(ro, what);
    ro += rcount[d];
  }
  Clock clock(stats_.exchange_s);
  MPI_Alltoallv(out, scount.data(), sdispl.data(), MPI_BYTE, in, rcount.data(), rdispl.data(),
                MPI_BYTE, L.comm);
}

void MpiGroup::Exchange(int level, int64_t n, const uint8_t* records, float* partial) {
  Level& L = levels_[level];
  LevelStats& st = stats_.levels[level];
  const int64_t rb = record_bytes_, pb = partial_bytes();
  const bool last = level + 1 == static_cast<int>(levels_.size());
  auto experts = [&](const uint8_t* r) { return reinterpret_cast<const int32_t*>(r); };
  auto goes_to = [&](const uint8_t* r, int d) {
    for (int64_t k = 0; k < K_; ++k) {
      if (experts(r)[k] >= 0 && DestOf(level, experts(r)[k]) == d) return true;
    }
    return false;
  };

  // Copies per destination, then the send buffer destination by destination (records in order).
  std::fill(L.send_counts.begin(), L.send_counts.end(), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t fanout = 0;
    for (int d = 0; d < L.size; ++d) {
      if (goes_to(records + i * rb, d)) ++L.send_counts[d], ++fanout;
    }
    st.max_fanout = std::max(st.max_fanout, fanout);
  }
  int64_t sent = 0;
  for (int d = 0; d < L.size; ++d) sent += L.send_counts[d];
  Grow(L.send, static_cast<size_t>(sent * rb));
  Grow(L.source, static_cast<size_t>(sent));
  int64_t pos = 0;
  for (int d = 0; d < L.size; ++d) {
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* r = records + i * rb;
      if (!goes_to(r, d)) continue;
      uint8_t* copy = L.send.data() + pos * rb;
      std::memcpy(copy, r, rb);
      int32_t* e = reinterpret_cast<int32_t*>(copy);
      for (int64_t k = 0; k < K_; ++k) {
        if (e[k] >= 0 && DestOf(level, e[k]) != d) e[k] = -1;
      }
      L.source[pos++] = static_cast<int32_t>(i);
    }
  }
  for (int d = 0; d < L.size; ++d) {
    if (d == L.rank) {
      st.self_records += L.send_counts[d];
    } else {
      st.records += L.send_counts[d];
      st.dispatch_bytes += L.send_counts[d] * rb;
    }
  }

  // Dispatch: counts, then the records.
  {
    Clock clock(stats_.exchange_s);
    MPI_Alltoall(L.send_counts.data(), 1, MPI_INT, L.recv_counts.data(), 1, MPI_INT, L.comm);
  }
  int64_t received = 0;
  for (int d = 0; d < L.size; ++d) received += L.recv_counts[d];
  Grow(L.recv, static_cast<size_t>(received * rb));
  AllToAll(L, L.send_counts, L.recv_counts, rb, L.send.data(), L.recv.data(), "dispatch bytes");

  // The experts behind this level, then the partial sums back.
  Grow(L.partial_in, static_cast<size_t>(received * D_));
  if (last) {
    Compute(received, L.recv.data(), L.partial_in.data());
  } else {
    Exchange(level + 1, received, L.recv.data(), L.partial_in.data());
  }
  Grow(L.combine_send, static_cast<size_t>(received * pb));
  Grow(L.combine_recv, static_cast<size_t>(sent * pb));
  for (int64_t j = 0; j < received; ++j) {
    const float* p = L.partial_in.data() + j * D_;
    uint8_t* o = L.combine_send.data() + j * pb;
    if (options_.exchange == Exchange::kFp8) {
      uint16_t* h = reinterpret_cast<uint16_t*>(o);
      for (int64_t c = 0; c < D_; ++c) h[c] = F32ToBF16(p[c]);
    } else {
      std::memcpy(o, p, 4 * D_);
    }
  }
  for (int d = 0; d < L.size; ++d) {
    if (d != L.rank) st.combine_bytes += L.recv_counts[d] * pb;
  }
  AllToAll(L, L.recv_counts, L.send_counts, pb, L.combine_send.data(), L.combine_recv.data(),
           "combine bytes");

  // Each record's partial: the sum of what its destinations returned, in destination order.
  std::fill(partial, partial + n * D_, 0.0f);
  for (int64_t p = 0; p < sent; ++p) {
    const uint8_t* o = L.combine_recv.data() + p * pb;
    float* dst = partial + L.source[p] * D_;
    if (options_.exchange == Exchange::kFp8) {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(o);
      for (int64_t c = 0; c < D_; ++c) dst[c] += BF16ToF32(h[c]);
    } else {
      kernels::Add(reinterpret_cast<const float*>(o), dst, D_);
    }
  }
}

void MpiGroup::Compute(int64_t n, const uint8_t* records, float* partial) {
  Clock clock(stats_.compute_s);
  const int64_t rb = record_bytes_, E = experts_per_rank_, first_expert = rank_ * E;
  // Pairs (record, local expert), grouped by expert, records ascending within one.
  std::fill(count_.begin(), count_.end(), 0);
  int64_t pairs = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t* e = reinterpret_cast<const int32_t*>(records + j * rb);
    for (int64_t k = 0; k < K_; ++k) {
      if (e[k] < 0) continue;
      if (ExpertOwner(e[k]) != rank_)
        Fail("expert parallelism: expert {} sent to rank {}", e[k], rank_);
      ++count_[e[k] - first_expert];
      ++pairs;
    }
  }
  first_[0] = 0;
  for (int64_t e = 0; e < E; ++e) first_[e + 1] = first_[e] + count_[e];
  std::fill(count_.begin(), count_.end(), 0);
  Grow(pair_record_, static_cast<size_t>(pairs));
  Grow(pair_weight_, static_cast<size_t>(pairs));
  for (int64_t j = 0; j < n; ++j) {
    const int32_t* e = reinterpret_cast<const int32_t*>(records + j * rb);
    const float* w = reinterpret_cast<const float*>(records + j * rb + 4 * K_);
    for (int64_t k = 0; k < K_; ++k) {
      if (e[k] < 0) continue;
      const int64_t le = e[k] - first_expert;
      const int64_t slot = first_[le] + count_[le]++;
      pair_record_[slot] = static_cast<int32_t>(j);
      pair_weight_[slot] = w[k];
    }
  }
  if (pairs > mlp_rows_) {  // grows to the largest step seen, then stays
    mlp_rows_ = std::max(pairs, 2 * mlp_rows_);
    mlps_ = std::make_unique<MlpBatch>(E, mlp_rows_, config_->moe_intermediate_size, D_);
    gathered_ = AlignedArray<float>(static_cast<size_t>(mlp_rows_ * D_), false);
    expert_out_ = AlignedArray<float>(static_cast<size_t>(mlp_rows_ * D_), false);
  }
  for (int64_t s = 0; s < pairs; ++s) {
    Decode(records + pair_record_[s] * rb + 8 * K_, gathered_.data() + s * D_);
  }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t m = first_[e + 1] - first_[e];
    if (m == 0) continue;
    mlps_->Add(weights_->experts[first_expert + e], gathered_.data() + first_[e] * D_, m,
               expert_out_.data() + first_[e] * D_);
  }
  if (pairs > 0) mlps_->Run(matmul_);
  // partial[j] = sum over j's experts, in expert order, of weight * output.
  std::fill(partial, partial + n * D_, 0.0f);
  for (int64_t s = 0; s < pairs; ++s) {
    kernels::Axpy(pair_weight_[s], expert_out_.data() + s * D_, partial + pair_record_[s] * D_, D_);
  }
}

// ---- followers -------------------------------------------------------------------------------

void Follow(const Model& model, MpiGroup& group) {
  std::map<int64_t, std::unique_ptr<Context>> contexts;
  const Config& c = model.config();
  auto context = [&](int64_t id) -> Context& {
    auto it = contexts.find(id);
    if (it == contexts.end()) Fail("expert parallelism: rank 0 used unknown context {}", id);
    return *it->second;
  };
  for (;;) {
    const MpiGroup::Announcement& a = group.Receive();
    switch (a.kind) {
      case MpiGroup::Kind::kStop:
        return;
      case MpiGroup::Kind::kOpen: {
        ContextOptions o;
        o.capacity = a.args[0];
        o.max_batch = a.args[1];
        o.attention = static_cast<AttentionImpl>(a.args[2]);
        o.slots = a.args[3];
        o.kv_cache = static_cast<KvCacheType>(a.args[4]);
        o.matmul = static_cast<kernels::MatMulPrecision>(a.args[5]);
        contexts[a.id] = std::make_unique<Context>(model, o);
        break;
      }
      case MpiGroup::Kind::kClose:
        contexts.erase(a.id);
        break;
      case MpiGroup::Kind::kBatch:
        context(a.id).RunPlanned(a.steps, nullptr, static_cast<kernels::MatMulPath>(a.args[2]));
        break;
      case MpiGroup::Kind::kCopyPrefix:
        context(a.id).RunCopyPrefix(static_cast<int32_t>(a.args[0]),
                                    static_cast<int32_t>(a.args[1]), a.args[2]);
        break;
      case MpiGroup::Kind::kLink:
        group.PingPong(a.args[0], static_cast<int>(a.args[1]));
        break;
      case MpiGroup::Kind::kFigures:
        group.SendFigures(model, a.args[0] != 0);
        break;
      case MpiGroup::Kind::kMtp: {
        const int64_t k = a.args[0];
        const LayerWeights& lw = model.mtp().at(static_cast<size_t>(k)).layer;
        const kernels::MatMulOptions mm{
            .path = static_cast<kernels::MatMulPath>(a.args[1]),
            .precision = static_cast<kernels::MatMulPrecision>(a.args[2])};
        if (lw.is_moe) {
          group.RoutedExperts(mm, lw.moe, c.num_hidden_layers + k, 0, nullptr, nullptr, nullptr,
                              nullptr);
        }
        break;
      }
    }
  }
}

}  // namespace dsv3::ep
