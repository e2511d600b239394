// The NCCL backend of Communicator: CUDA buffers, one ncclComm and one CUDA
// stream per group, Work = a CUDA event recorded on that stream after the
// operation. Same sequence numbers and watchdog records as the MPI backend.
//
// Creation is collective over an MpiCommunicator of the same ranks: group
// rank 0 creates the ncclUniqueId, broadcasts it over MPI, and every member
// joins with ncclCommInitRank on its current CUDA device (select it first,
// by local rank). The NCCL communicator takes that group's name, ranks,
// timeout and watchdog, and keeps it as host(): host values go over MPI.
//
// Ordering with the compute stream of a CudaBackend (`compute`, when given):
// every operation first makes the NCCL stream wait for the work queued on
// the compute stream so far (an event recorded there), and
// Work::StreamWait makes the compute stream wait for the operation's event,
// so neither side blocks the host. A Work finished that way stays watched
// by the process's CollectiveWatchdog (parallel/comm/watchdog_thread.h): its
// thread polls the operation's event and the communicator's asynchronous
// error, and one past the group's timeout (or failed) aborts the
// communicator (ncclCommAbort) and ends the job with the CommunicationError
// (exit 5) naming the collective, the group and the rank, even while the
// host is blocked in the step's Synchronize. Each later operation of the
// group, and each Wait, runs the same check first and returns that error.
//
// Differences from the MPI backend, all NCCL's own:
//  - every dtype reduces, bf16 and f16 included (kAvg is ncclAvg, f32/bf16/f16
//    only, as for MPI: integer averages are rejected);
//  - Send/Recv match by order between a pair of ranks, not by tag (the tag is
//    checked to be non-negative and otherwise only shows in messages), and
//    run one after the other on the stream: a ring must alternate (even
//    ranks send first, odd ranks receive first) or it deadlocks;
//  - Barrier is a one-element all-reduce on the stream;
//  - when Wait's deadline passes, or NCCL reports an asynchronous error, the
//    communicator is aborted (ncclCommAbort, so that no kernel spins forever)
//    and every later operation on it fails: the job must end (AbortJob).
// In-place forms follow NCCL: ReduceScatter recv == send + rank()*recv_count,
// AllGather send == recv + rank()*send_count.
//
// Operations are enqueued on stream(); buffers must be ready there (callers
// on other streams make stream() wait on an event first).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/watchdog.h"
#include "parallel/comm/watchdog_thread.h"
#include "runtime/backend/backend.h"

namespace tessera::parallel {

// What the communicator and its pending Work share; the unit the
// collective watchdog watches and aborts.
struct NcclGroup final : WatchedGroup {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  int* barrier_word = nullptr;  // device memory for Barrier
  std::string name;
  std::vector<int> world_ranks;
  int rank = 0;
  absl::Duration timeout;
  std::shared_ptr<Watchdog> watchdog;
  std::shared_ptr<WatchdogGroup> counter;
  // Set by Abort, from the host thread or the watchdog thread.
  std::atomic<bool> aborted{false};
  // The compute stream the operations are ordered with (null: none), and
  // the event each operation records there first.
  cudaStream_t compute = nullptr;
  cudaEvent_t ready = nullptr;

  absl::Status Abort();  // ncclCommAbort once
  // The watchdog's check of this group's operations the compute stream
  // waits for: the CommunicationError naming the first one past its
  // deadline or failed (the communicator is then aborted).
  absl::Status CheckPending() { return CollectiveWatchdog::Process().Check(*this); }

  const std::string& group_name() const override { return name; }
  int world_rank() const override { return world_ranks[static_cast<size_t>(rank)]; }
  absl::Status AbortGroup() override;
  std::string DescribeOthers(int64_t seq, int peer) const override;
  ~NcclGroup() override;
};

class NcclCommunicator final : public Communicator {
 public:
  // Collective over the members of `group`, which must outlive the
  // result. `compute`: the CudaBackend whose stream the operations are
  // ordered with (see above), or null.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(MpiCommunicator& group,
                                                                  Backend* compute = nullptr);

  int rank() const override { return group_->rank; }
  int size() const override { return static_cast<int>(group_->world_ranks.size()); }
  const std::string& name() const override { return group_->name; }
  const std::vector<int>& world_ranks() const override { return group_->world_ranks; }
  absl::Duration timeout() const override { return group_->timeout; }
  Communicator& host() override { return host_; }
  cudaStream_t stream() const { return group_->stream; }

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

 private:
  NcclCommunicator(std::shared_ptr<NcclGroup> group, MpiCommunicator& host)
      : group_(std::move(group)), host_(host) {}
  std::shared_ptr<NcclGroup> group_;
  MpiCommunicator& host_;
};

}  // namespace tessera::parallel
