// The MPI backend of Communicator: host buffers, one MPI communicator per
// group (MPI_Comm_split), every operation a non-blocking MPI call whose Work
// polls MPI_Test until it completes or its deadline passes — except
// all-reduces and reduce-scatters of at least kThreadedAllReduceBytes: when
// MPI runs with MPI_THREAD_MULTIPLE those are blocking MPI_Allreduce /
// MPI_Reduce_scatter_block calls made by the group's MpiCollectiveThread
// (Open MPI's non-blocking forms run through libnbc: the all-reduce up to
// 2.2x slower, the reduce-scatter of ZeRO-1's gradient buckets up to 15x;
// mpi_collective_thread.h), with the same Work
// semantics. TESSERA_MPI_COLLECTIVE_THREAD=0 in the environment of any
// member keeps the group's collectives non-blocking (to compare, or for an
// MPI whose threads misbehave); the members agree on it when the group is
// created.
//
// Types: f32, i32, i64 and u8 for everything; bf16 and f16 only for data
// movement (all-gather, all-to-all(v), broadcast, send/recv) — MPI has no
// 16-bit float reductions, so reducing them is an InvalidArgument error
// (reduce in f32). kAvg is the sum divided by size() in f32 and is rejected
// for integer types rather than silently truncated.
//
// In-place forms follow NCCL's convention: ReduceScatter with
// recv == send + rank() * recv_count elements, AllGather with
// send == recv + rank() * send_count elements. Any other overlap is an error.
//
// Counts must fit in MPI's `int` (per call, and for AllToAllV the prefix
// sums too); larger counts are an InvalidArgument error.
//
// Sequence numbers: each collective (not Send/Recv, whose order is per pair
// of ranks, not per group) takes the next number of the group's watchdog
// counter; a timeout names it and the ranks that never reached it.
//
// Traffic accounting (benchmarks; docs/parallelism.md, "Communication
// volume"): each communicator counts the operations this rank issued on it
// (calls(), Send/Recv/Barrier included) and their payload bytes from this
// rank's point of view (bytes_sent()):
//   AllReduce       count * element size (the buffer)
//   ReduceScatter   size() * recv_count * element size (the send buffer)
//   AllGather       size() * send_count * element size (the receive buffer)
//   AllToAll        (size() - 1) * count_per_rank * element size (to the others)
//   AllToAllV       sum of send_counts[r], r != rank(), * element size
//   Broadcast       count * element size, on every rank
//   Send            count * element size; Recv and Barrier: 0
// On a group of one rank nothing leaves the process: every call counts 0
// bytes. A call is counted once it passed its argument checks. Wire traffic
// follows from the payload by the algorithm (a ring all-reduce sends
// 2 (n - 1)/n of the buffer; ring all-gather and reduce-scatter (n - 1)/n).
//
// Destroying a Work before it completed leaves its MPI request pending (MPI
// forbids freeing an active collective request): only do that on the way to
// AbortJob. A Wait that timed out may be called again and still succeed.
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/mpi_collective_thread.h"
#include "parallel/comm/op_info.h"
#include "parallel/comm/watchdog.h"

namespace tessera::parallel {

struct MpiFinish;  // mpi_work.h

// All-reduces and reduce-scatters from this size up run as blocking calls on
// the group's collective thread (below it the hand-over costs more than
// libnbc loses).
inline constexpr size_t kThreadedAllReduceBytes = size_t{64} << 10;

// What the communicator and its pending Work share; outlives whichever goes last.
struct MpiGroup {
  MPI_Comm comm = MPI_COMM_NULL;
  // With MPI_THREAD_MULTIPLE: a duplicate of `comm` and the thread that runs
  // blocking collectives on it; otherwise null.
  MPI_Comm thread_comm = MPI_COMM_NULL;
  std::unique_ptr<MpiCollectiveThread> collective_thread;
  std::string name;
  std::vector<int> world_ranks;
  int rank = 0;
  absl::Duration timeout;
  std::shared_ptr<Watchdog> watchdog;
  std::shared_ptr<WatchdogGroup> counter;
  ~MpiGroup();
};

class MpiCommunicator final : public Communicator {
 public:
  // Collective over every rank of `parent`. Each rank passes the world ranks
  // of the group it joins, in group-rank order (ranks of different groups
  // pass different, disjoint lists in the same call, as Megatron builds its
  // groups); a rank not in its own list gets nullptr. Fails if the members
  // of a group passed different lists.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(
      MPI_Comm parent, const std::vector<int>& world_ranks_of_group, std::string name,
      absl::Duration timeout, std::shared_ptr<Watchdog> watchdog);
  // All of MPI_COMM_WORLD (duplicated), named "world". Collective.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> CreateWorld(
      absl::Duration timeout, std::shared_ptr<Watchdog> watchdog);
  // Create() over this group's ranks, with this group's timeout and watchdog.
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> CreateSubgroup(
      const std::vector<int>& world_ranks_of_group, std::string name) const;

  int rank() const override { return group_->rank; }
  int size() const override { return static_cast<int>(group_->world_ranks.size()); }
  const std::string& name() const override { return group_->name; }
  const std::vector<int>& world_ranks() const override { return group_->world_ranks; }
  absl::Duration timeout() const override { return group_->timeout; }
  MPI_Comm comm() const { return group_->comm; }
  const std::shared_ptr<Watchdog>& watchdog() const { return group_->watchdog; }
  // Sequence number of the last collective this rank issued on the group.
  int64_t last_sequence() const { return group_->counter->last_entered(); }

  absl::StatusOr<std::unique_ptr<Work>> AllReduce(void* data, size_t count, DType dtype,
                                                  ReduceOp op) override;
  absl::StatusOr<std::unique_ptr<Work>> ReduceScatter(const void* send, void* recv,
                                                      size_t recv_count, DType dtype,
                                                      ReduceOp op) override;
  absl::StatusOr<std::unique_ptr<Work>> AllGather(const void* send, void* recv, size_t send_count,
                                                  DType dtype) override;
  absl::StatusOr<std::unique_ptr<Work>> AllToAll(const void* send, void* recv,
                                                 size_t count_per_rank, DType dtype) override;
  absl::StatusOr<std::unique_ptr<Work>> AllToAllV(const void* send,
                                                  const std::vector<size_t>& send_counts,
                                                  void* recv,
                                                  const std::vector<size_t>& recv_counts,
                                                  DType dtype) override;
  absl::StatusOr<std::unique_ptr<Work>> Broadcast(void* data, size_t count, DType dtype,
                                                  int root) override;
  absl::StatusOr<std::unique_ptr<Work>> Send(const void* data, size_t count, DType dtype, int peer,
                                             int tag) override;
  absl::StatusOr<std::unique_ptr<Work>> Recv(void* data, size_t count, DType dtype, int peer,
                                             int tag) override;
  absl::StatusOr<std::unique_ptr<Work>> Barrier() override;

  // Payload bytes and operations issued on this communicator by this rank
  // since creation or the last ResetCounters() (see the file comment).
  int64_t bytes_sent() const { return bytes_sent_; }
  int64_t calls() const { return calls_; }
  void ResetCounters() { bytes_sent_ = calls_ = 0; }

 private:
  explicit MpiCommunicator(std::shared_ptr<MpiGroup> group) : group_(std::move(group)) {}
  void Count(size_t bytes);
  // Whether a collective of `bytes` runs on the group's collective thread.
  bool Threaded(size_t bytes) const;
  // Posts `run` (a blocking collective on the thread's communicator), then
  // `finish` on the thread once it succeeded.
  std::unique_ptr<Work> OnThread(const OpInfo& info, const char* call, const MpiFinish& finish,
                                 std::function<int(MPI_Comm)> run);
  std::shared_ptr<MpiGroup> group_;
  int64_t bytes_sent_ = 0, calls_ = 0;
};

}  // namespace tessera::parallel
