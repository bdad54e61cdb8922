// Expert parallelism on MPI: the ProcessGroup of model/process_group.h over MPI_COMM_WORLD.
//
// Routed experts are split evenly and contiguously: rank r holds experts [r * E / P, (r + 1) *
// E / P) of every MoE layer. A MoE layer's exchange, for each rank's own tokens:
//   dispatch  each token, once per destination, with its routing weights for the experts there
//             (E4M3 with one float scale per 128 values, or exact float32);
//   compute   each rank runs its experts on what it received and sums, per token, the weighted
//             outputs of its experts;
//   combine   those partial sums go back (BF16, or float32) and the token's rank adds them up.
// Counts go first (MPI_Alltoall), then the payload (MPI_Alltoallv).
//
// Node-limited routing: with ranks_per_node R (P / R nodes, contiguous ranks), a token goes to a
// node once, to the rank there with its own local index, which forwards it inside the node to
// the ranks holding its experts and sums their partials before answering: the exchange runs in
// two levels (between nodes, then within the node). With the model's group routing and n_group
// a multiple of the node count, each group lies in one node and a token reaches at most
// topk_group nodes.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/aligned.h"
#include "model/config.h"
#include "model/moe.h"
#include "model/process_group.h"

namespace dsv3 {
class Model;
}

namespace dsv3::ep {

enum class Exchange {
  kF32,  // float32 both ways: the same numbers as one process, up to summation order
  kFp8,  // the paper's formats: dispatch E4M3 with 1x128 scales (amax / 448), combine BF16
};
const char* ExchangeName(Exchange e);  // "f32", "fp8"

struct GroupOptions {
  Exchange exchange = Exchange::kF32;
  int ranks_per_node = 0;  // 0: all ranks on one node (a single-level exchange)
};

// Traffic of one exchange level, summed since the last ResetStats.
struct LevelStats {
  int64_t records = 0;         // token copies sent to other ranks (dispatch)
  int64_t dispatch_bytes = 0;  // bytes of them
  int64_t combine_bytes = 0;   // bytes of the partial sums sent back to other ranks
  int64_t self_records = 0;    // token copies that stayed on this rank
  int64_t max_fanout = 0;      // most destinations one token went to at this level
};

struct ExchangeStats {
  int64_t exchanges = 0;  // MoE layer exchanges this rank took part in
  int64_t tokens = 0;     // own tokens dispatched
  double exchange_s = 0;  // wall time in MPI calls (including waiting for other ranks)
  double compute_s = 0;   // wall time running the experts on received tokens
  LevelStats levels[2];   // [0]: between nodes (or all ranks), [1]: within a node
  int levels_used = 1;
};

// What rank 0 gathers from each rank: the weight bytes it holds and its exchange statistics.
struct RankFigures {
  double held_bytes = 0;       // tensors bound on this rank (main model + MTP)
  double elsewhere_bytes = 0;  // routed-expert tensors other ranks hold
  double rss_bytes = 0;        // resident memory now (VmRSS)
  ExchangeStats stats;
};

// MPI itself: initialized once per process, finalized at exit. Launched() tells whether this
// process was started by mpirun (Open MPI's environment); only then is MPI initialized.
class World {
 public:
  static bool Launched();
  World(int* argc, char*** argv);
  ~World();
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Prints "dsv3: error: rank R: message" and ends every rank (MPI_Abort).
  [[noreturn]] void Abort(const std::string& message) const;

 private:
  int rank_ = 0, size_ = 1;
};

class MpiGroup final : public ProcessGroup {
 public:
  explicit MpiGroup(const GroupOptions& options);
  ~MpiGroup() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void Prepare(const Config& config) override;
  int ExpertOwner(int64_t e) const override { return static_cast<int>(e / experts_per_rank_); }
  int64_t OpenContext(const ContextOptions& options) override;
  void CloseContext(int64_t id) override;
  void AnnounceBatch(int64_t id, std::span<const PlannedStep> steps,
                     kernels::MatMulPath path) override;
  void GatherLogits(std::span<const PlannedStep> steps, const float* own, float* logits,
                    int64_t vocab) override;
  void AnnounceCopyPrefix(int64_t id, int32_t from, int32_t to, int64_t n) override;
  void SendBytes(int to, const void* data, size_t bytes) override;
  void ReceiveBytes(int from, void* data, size_t bytes) override;
  void AnnounceMtp(int64_t k, const kernels::MatMulOptions& matmul) override;
  void RoutedExperts(const kernels::MatMulOptions& matmul, const MoeWeights& w, int64_t layer,
                     int64_t T, const float* xn, const int32_t* indices, const float* weights,
                     float* out) override;

  // Rank 0: the other ranks leave Follow. Called once, at the end of the command.
  void Stop();
  const GroupOptions& options() const { return options_; }
  int nodes() const { return nodes_; }
  int NodeOf(int rank) const { return rank / ranks_per_node_; }
  const ExchangeStats& stats() const { return stats_; }
  void ResetStats() {
    const int levels = stats_.levels_used;
    stats_ = ExchangeStats();
    stats_.levels_used = levels;
  }
  // Bytes of one dispatched token copy and of one partial sum sent back.
  int64_t record_bytes() const { return record_bytes_; }
  int64_t partial_bytes() const;

  // Rank 0: every rank's figures (index = rank); with `reset`, each rank's statistics restart
  // after being read.
  std::vector<RankFigures> GatherFigures(const Model& model, bool reset);

  // Rank 0 with rank 1: ping-pong of `bytes` (reps round trips); the one-way bandwidth in GB/s
  // and, from 8-byte messages, the one-way latency in microseconds. Needs two ranks.
  struct Link {
    double gbs = 0, latency_us = 0;
  };
  Link MeasureLink(int64_t bytes, int reps);

  // What rank 0 announces, as the followers receive it (Follow's loop).
  enum class Kind : int64_t { kStop, kOpen, kClose, kBatch, kCopyPrefix, kMtp, kFigures, kLink };
  struct Announcement {
    Kind kind = Kind::kStop;
    int64_t id = 0;
    int64_t args[6] = {};
    std::vector<PlannedStep> steps;  // kBatch: spans into the group's receive buffers
  };
  // Followers: blocks until rank 0's next announcement.
  const Announcement& Receive();

 private:
  struct Level {
    MPI_Comm comm = MPI_COMM_NULL;
    int size = 1, rank = 0;
    // Scratch, grown to the largest step seen (no allocation once warm).
    std::vector<uint8_t> send, recv;
    std::vector<float> partial_in, partial_out;  // [received, D] / [sent, D]
    std::vector<uint8_t> combine_send, combine_recv;
    std::vector<int32_t> source;                      // [sent] the record each sent copy came from
    std::vector<int> send_counts, recv_counts;        // in records, per destination
    std::vector<int> byte_counts[2], byte_displs[2];  // in bytes: [0] sent, [1] received
  };
  void Header(int64_t kind, int64_t id, std::initializer_list<int64_t> args);
  friend void Follow(const Model& model, MpiGroup& group);
  // Every rank, after a kFigures announcement: its figures to rank 0.
  std::vector<RankFigures> SendFigures(const Model& model, bool reset);
  // Ranks 0 and 1 after a kLink announcement (the others do nothing).
  Link PingPong(int64_t bytes, int reps);
  int DestOf(int level, int64_t expert) const;
  // MPI_Alltoallv over L.comm of send[d] / recv[d] items of `unit` bytes each way (timed into
  // the statistics); `what` names the count in the overflow error.
  void AllToAll(Level& L, const std::vector<int>& send, const std::vector<int>& recv, int64_t unit,
                const uint8_t* out, uint8_t* in, const char* what);
  // The n records (record_bytes_ each) through level `level` and below; partial [n, D] gets,
  // per record, the weighted sum of its experts' outputs.
  void Exchange(int level, int64_t n, const uint8_t* records, float* partial);
  // The experts of this rank on n received records.
  void Compute(int64_t n, const uint8_t* records, float* partial);
  void Encode(const float* x, uint8_t* payload) const;
  void Decode(const uint8_t* payload, float* x) const;

  GroupOptions options_;
  int rank_ = 0, size_ = 1, ranks_per_node_ = 1, nodes_ = 1;
  int64_t next_id_ = 0;
  const Config* config_ = nullptr;
  int64_t D_ = 0, K_ = 0, experts_per_rank_ = 1, blocks_ = 0, payload_bytes_ = 0, record_bytes_ = 0;
  std::vector<Level> levels_;
  ExchangeStats stats_;
  // RoutedExperts' current call.
  const MoeWeights* weights_ = nullptr;
  kernels::MatMulOptions matmul_;
  std::vector<uint8_t> own_records_;
  // Compute's scratch.
  std::vector<int32_t> count_, first_, pair_record_;
  std::vector<float> pair_weight_;
  AlignedArray<float> gathered_, expert_out_;  // [pairs, D]
  std::unique_ptr<MlpBatch> mlps_;
  int64_t mlp_rows_ = 0;
  // Follow's receive buffers and GatherLogits' scratch.
  Announcement announced_;
  std::vector<int64_t> step_words_;
  std::vector<int32_t> step_tokens_;
  std::vector<float> gathered_logits_;
  std::vector<int> logit_counts_, logit_displs_;
};

// Ranks other than 0: create, run and drop contexts as rank 0 announces, until it stops.
void Follow(const Model& model, MpiGroup& group);

}  // namespace dsv3::ep
