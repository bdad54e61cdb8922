// The front end's expert parallelism: when dsv3 runs under mpirun (and was built with MPI), every
// rank loads the model with its share of the routed experts; rank 0 runs the command and the
// other ranks follow it (src/ep). Without mpirun nothing here does anything.
#pragma once

#include <string>

#include "model/model.h"
#include "runtime/bench.h"

namespace dsv3::cli {

struct EpArgs {
  std::string exchange = "f32";  // f32 | fp8 (dispatch E4M3 + 1x128 scales, combine BF16)
  int ranks_per_node = 0;        // 0: all ranks on one node
};

// Thrown on ranks other than 0 once rank 0 has finished the command; main returns 0.
struct FollowerDone {};

class EpSession {
 public:
  // Initializes MPI when launched by mpirun. Fails when launched so but built without MPI.
  EpSession(int* argc, char*** argv);
  ~EpSession();
  bool active() const { return active_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_size() const { return local_size_; }  // ranks on this machine
  // Creates the process group (before any model is loaded).
  void Configure(const EpArgs& args);
  ProcessGroup* group() const;
  // After a model is loaded: ranks other than 0 follow rank 0 until it stops, then throw
  // FollowerDone. Rank 0 returns at once.
  void AfterLoad(const Model& model);
  // Rank 0, the command done: the other ranks leave.
  void Finish();
  // Any rank: ends every rank, the message naming this one.
  [[noreturn]] void Abort(const std::string& message);

  // `dsv3 info` on rank 0: a JSON array, per rank: its routed experts, the bytes it holds and
  // those other ranks hold, its resident memory.
  std::string Holdings(const Model& model) const;
  // `dsv3 bench --ep-report`: decode steps split into compute and exchange, and the bytes each
  // rank sent per step and per token, next to the analyzer's model of them.
  void PrintReport(const Model& model, const BenchOptions& options) const;

 private:
  struct State;
  State* state_ = nullptr;
  bool active_ = false;
  int rank_ = 0, size_ = 1, local_size_ = 1;
};

// The session of this process (set by main; null in the tests).
EpSession* Ep();
void SetEp(EpSession* session);

}  // namespace dsv3::cli
