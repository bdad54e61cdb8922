// Expert parallelism as the model sees it: several processes run one model together. Each rank
// holds every weight except the routed experts, of which it holds the ones ExpertOwner() gives
// it, and the latent cache of the sequence slots it owns (slot s lives on rank s % size, as
// local slot s / size: attention is data-parallel). Rank 0 drives: its contexts announce each
// step (which tokens of which slots run where), every rank runs its own tokens through the
// layers, and the MoE layers exchange tokens with the ranks that own their selected experts.
// The other ranks follow rank 0's announcements (ep::Follow). ep/ implements this on MPI; the
// model layer only calls these functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/matmul.h"

namespace dsv3 {

struct Config;
struct ContextOptions;
struct MoeWeights;

// One step of a batch as rank 0 announces it: `count` tokens of global slot `slot`, starting at
// position `position`.
struct PlannedStep {
  int32_t slot;
  int64_t position;
  std::span<const int32_t> tokens;
};

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Model::Load calls this first: fails (dsv3::Error) when the experts of `config` cannot be split
  // over the ranks.
  virtual void Prepare(const Config& config) = 0;
  // The rank that holds routed expert e (the same in every layer).
  virtual int ExpertOwner(int64_t e) const = 0;

  int SlotOwner(int64_t slot) const { return static_cast<int>(slot % size()); }
  int32_t LocalSlot(int64_t slot) const { return static_cast<int32_t>(slot / size()); }
  // Slots of `slots` (global) that rank r holds.
  int64_t LocalSlots(int64_t slots, int r) const { return (slots - r + size() - 1) / size(); }

  // Rank 0: a context with these options now exists (the other ranks create theirs); returns its
  // id for the calls below. CloseContext: it is gone.
  virtual int64_t OpenContext(const ContextOptions& options) = 0;
  virtual void CloseContext(int64_t id) = 0;
  // Rank 0: the next forward pass of context `id` runs `steps` with this product path.
  virtual void AnnounceBatch(int64_t id, std::span<const PlannedStep> steps,
                             kernels::MatMulPath path) = 0;
  // Every rank, after its part of an announced batch: rank r passes the logits of its own steps
  // ([n_r, vocab], in announcement order); rank 0 receives every step's row into logits
  // ([steps, vocab]), its own included. No messages when every step is rank 0's (a single
  // sequence: rank 0's Context::Forward, which leaves its rows where Run put them, relies on it).
  virtual void GatherLogits(std::span<const PlannedStep> steps, const float* own, float* logits,
                            int64_t vocab) = 0;
  // Rank 0: slot `to` of context `id` takes the first n cached positions of slot `from`.
  virtual void AnnounceCopyPrefix(int64_t id, int32_t from, int32_t to, int64_t n) = 0;
  // Point to point (a cache prefix moving between ranks).
  virtual void SendBytes(int to, const void* data, size_t bytes) = 0;
  virtual void ReceiveBytes(int from, void* data, size_t bytes) = 0;
  // Rank 0: MTP module k runs a step (its MoE layer exchanges like the main layers').
  virtual void AnnounceMtp(int64_t k, const kernels::MatMulOptions& matmul) = 0;

  // Collective over all ranks, in the same order on each: the routed half of a MoE layer for
  // this rank's T tokens (T may be 0). out [T, D] = sum_k weights[t, k] *
  // Expert_{indices[t, k]}(xn[t]) with xn [T, D], indices / weights [T, K]; the experts run on
  // the ranks that own them. `layer` is the checkpoint layer (for statistics).
  virtual void RoutedExperts(const kernels::MatMulOptions& matmul, const MoeWeights& w,
                             int64_t layer, int64_t T, const float* xn, const int32_t* indices,
                             const float* weights, float* out) = 0;
};

}  // namespace dsv3
