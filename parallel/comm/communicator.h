// Communicator: the collectives of one process group.
//
// Contract (as in PyTorch c10d's ProcessGroup): every rank of a group issues
// that group's collectives in the same order, with matching sizes and types.
// Different groups are independent: a rank may interleave the collectives of
// its tp, dp, ep... groups freely, as long as each group's own order agrees
// across its ranks. A Communicator is used from one thread at a time.
//
// Every collective is asynchronous: it starts the operation and returns a
// Work handle. Buffers must stay valid and untouched until Wait() returns OK.
// Wait(timeout) fails with a CommunicationError (exit code 5) when the
// deadline passes, naming the collective, the group, the bytes, the
// collective's sequence number in its group and the ranks that never
// arrived, so that a dead or stuck rank never turns into a silent hang.
//
// Collectives come in two kinds, by where their buffers live:
//  - device buffers (activations, gradient buckets, parameters, ZeRO shards,
//    expert tokens) go through the run's communicator of the group, which
//    works on the memory of the run's backend: MPI on host memory for a CPU
//    run, NCCL on a GPU's memory (StagedCommunicator where NCCL cannot be
//    used). The caller finishes them with CompleteOnDevice: the compute
//    stream, not the host, waits for them.
//  - host values (losses, norm partials, expert counts, flags, checkpoint
//    coordination) go through host(): the same group over MPI on host
//    memory, finished with Complete (the host reads the result). For a CPU
//    run host() is the communicator itself.
// A device communicator orders each collective after the work its backend's
// compute stream has queued (it is built for that backend), so a buffer is
// never read before the compute stream produced it. Counts are elements of
// `dtype`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/tensor/dtype.h"

namespace tessera::parallel {

enum class ReduceOp { kSum, kAvg, kMax };

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation completes or `timeout` passes.
  virtual absl::Status Wait(absl::Duration timeout) = 0;
  // Non-blocking: true once complete (errors are reported by Wait).
  virtual bool Test() = 0;
  // Orders the completion before what the compute stream of the
  // communicator's backend runs next, without blocking the host where the
  // device has streams (NCCL: the stream waits on the operation's event).
  // Work on host memory has no stream to order: it waits on the host.
  virtual absl::Status StreamWait(absl::Duration timeout) { return Wait(timeout); }
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in this group
  virtual int size() const = 0;
  // The group's name for messages, e.g. "dp" or "tp[ranks 0,1]".
  virtual const std::string& name() const = 0;
  // World rank of each member, indexed by group rank.
  virtual const std::vector<int>& world_ranks() const = 0;
  // The default deadline used by the blocking helpers below.
  virtual absl::Duration timeout() const = 0;
  // The same group for host values, over MPI on host memory (see above);
  // this communicator itself when its buffers are host memory.
  virtual Communicator& host() { return *this; }

  // In place: data[i] = op over ranks of data[i].
  virtual absl::StatusOr<std::unique_ptr<Work>> AllReduce(void* data, size_t count, DType dtype,
                                                          ReduceOp op) = 0;
  // send: size() * recv_count elements; rank r receives block r reduced.
  virtual absl::StatusOr<std::unique_ptr<Work>> ReduceScatter(const void* send, void* recv,
                                                              size_t recv_count, DType dtype,
                                                              ReduceOp op) = 0;
  // recv: size() * send_count elements, block r from rank r.
  virtual absl::StatusOr<std::unique_ptr<Work>> AllGather(const void* send, void* recv,
                                                          size_t send_count, DType dtype) = 0;
  // Block r of send (count_per_rank elements) goes to rank r; recv block r
  // comes from rank r.
  virtual absl::StatusOr<std::unique_ptr<Work>> AllToAll(const void* send, void* recv,
                                                         size_t count_per_rank, DType dtype) = 0;
  // Variable block sizes; blocks are packed in rank order (displacements are
  // the prefix sums of the counts). Every rank passes the counts it sends and
  // receives; send_counts[r] on rank q must equal recv_counts[q] on rank r.
  virtual absl::StatusOr<std::unique_ptr<Work>> AllToAllV(const void* send,
                                                          const std::vector<size_t>& send_counts,
                                                          void* recv,
                                                          const std::vector<size_t>& recv_counts,
                                                          DType dtype) = 0;
  virtual absl::StatusOr<std::unique_ptr<Work>> Broadcast(void* data, size_t count, DType dtype,
                                                          int root) = 0;
  virtual absl::StatusOr<std::unique_ptr<Work>> Send(const void* data, size_t count, DType dtype,
                                                     int peer, int tag) = 0;
  virtual absl::StatusOr<std::unique_ptr<Work>> Recv(void* data, size_t count, DType dtype,
                                                     int peer, int tag) = 0;
  virtual absl::StatusOr<std::unique_ptr<Work>> Barrier() = 0;

  // Host values: issue, then Wait(timeout()); the host may read the result.
  absl::Status Complete(absl::StatusOr<std::unique_ptr<Work>> work) {
    if (!work.ok()) return work.status();
    return (*work)->Wait(timeout());
  }
  // Device buffers: issue, then StreamWait(timeout()); the backend's ops
  // queued from now on see the result (the host itself may not yet).
  absl::Status CompleteOnDevice(absl::StatusOr<std::unique_ptr<Work>> work) {
    if (!work.ok()) return work.status();
    return (*work)->StreamWait(timeout());
  }
};

}  // namespace tessera::parallel
