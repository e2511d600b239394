// SingleRankCommunicator: the group of one rank. Layers written for a
// process group (tensor-parallel linears, sequence shards) run on one
// process through the same code with this group: every reduction over one
// rank is the identity, a gather or all-to-all is a copy, and no call waits.
// On a device backend, host() is a twin on the host backend, so host values
// are copied with the host's memcpy.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/comm/communicator.h"
#include "runtime/backend/backend.h"

namespace tessera::parallel {

class SingleRankCommunicator final : public Communicator {
 public:
  // Copies run on `backend` (the buffers' device), which must outlive this.
  explicit SingleRankCommunicator(Backend& backend, std::string name = "single rank");

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  absl::Duration timeout() const override { return absl::InfiniteDuration(); }
  Communicator& host() override { return host_twin_ ? *host_twin_ : *this; }

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
  // A group of one has no peer: both fail.
  absl::StatusOr<std::unique_ptr<Work>> Send(const void* data, size_t count, DType dtype, int peer,
                                             int tag) override;
  absl::StatusOr<std::unique_ptr<Work>> Recv(void* data, size_t count, DType dtype, int peer,
                                             int tag) override;
  absl::StatusOr<std::unique_ptr<Work>> Barrier() override;

 private:
  // Copies `count` elements (when the buffers differ) and returns a finished Work.
  std::unique_ptr<Work> CopyDone(const void* src, void* dst, size_t count, DType dtype);

  Backend& backend_;
  std::string name_;
  std::vector<int> world_ranks_ = {0};
  std::unique_ptr<SingleRankCommunicator> host_twin_;  // null on a host backend
};

}  // namespace tessera::parallel
