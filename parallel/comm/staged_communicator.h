// StagedCommunicator: an MPI group's collectives on the device buffers of a
// backend whose memory the host cannot read, for machines where NCCL cannot
// be used (several ranks sharing one GPU) or is not wanted (TESSERA_COMM=mpi,
// docs/cuda.md). Each operation copies its input from the device into a host
// staging buffer, runs the MPI collective there and, when it completes,
// copies the result back. The copies order it against the backend's compute
// stream: CopyToHost waits for the work queued before it, and the copy back
// is queued before any op issued after Wait returns.
//
// Every operation stays non-blocking, as the group's are (a Recv and a Send
// may be in flight together, as the sp shard chain needs): each one in
// flight holds a staging buffer of its own from a pool, returned when its
// Work is destroyed; a buffer grows to the largest operation it carried and
// is reused, so a steady-state step allocates no host memory. Wait (and
// StreamWait, the same here) waits for MPI, then copies back.
//
// host() is the MPI group itself: host values skip the staging. The group
// and the backend are not owned and must outlive this object and its Work.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/comm/communicator.h"
#include "runtime/backend/backend.h"

namespace tessera::parallel {

class StagingPool;

class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(Communicator& group, Backend& backend);
  ~StagedCommunicator() override;

  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  const std::string& name() const override { return group_.name(); }
  const std::vector<int>& world_ranks() const override { return group_.world_ranks(); }
  absl::Duration timeout() const override { return group_.timeout(); }
  Communicator& host() override { return group_; }
  // Bytes of host staging memory held (for tests and the memory report).
  size_t staging_bytes() const;

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
  Communicator& group_;
  Backend& backend_;
  std::shared_ptr<StagingPool> pool_;
};

}  // namespace tessera::parallel
