#include "parallel/comm/single_rank_communicator.h"

#include "absl/strings/str_cat.h"

namespace tessera::parallel {
namespace {

class DoneWork final : public Work {
 public:
  absl::Status Wait(absl::Duration) override { return absl::OkStatus(); }
  bool Test() override { return true; }
};

}  // namespace

SingleRankCommunicator::SingleRankCommunicator(Backend& backend, std::string name)
    : backend_(backend), name_(std::move(name)) {
  if (!backend.host_accessible()) {
    host_twin_ = std::make_unique<SingleRankCommunicator>(HostBackend(), name_);
  }
}

std::unique_ptr<Work> SingleRankCommunicator::CopyDone(const void* src, void* dst, size_t count,
                                                       DType dtype) {
  if (src != dst && count > 0) backend_.Copy(dst, src, count * DTypeSize(dtype));
  return std::make_unique<DoneWork>();
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::AllReduce(void*, size_t, DType,
                                                                        ReduceOp) {
  return std::unique_ptr<Work>(std::make_unique<DoneWork>());  // sum, mean or max of one
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::ReduceScatter(
    const void* send, void* recv, size_t recv_count, DType dtype, ReduceOp) {
  return CopyDone(send, recv, recv_count, dtype);
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::AllGather(const void* send,
                                                                        void* recv,
                                                                        size_t send_count,
                                                                        DType dtype) {
  return CopyDone(send, recv, send_count, dtype);
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::AllToAll(const void* send,
                                                                       void* recv,
                                                                       size_t count_per_rank,
                                                                       DType dtype) {
  return CopyDone(send, recv, count_per_rank, dtype);
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::AllToAllV(
    const void* send, const std::vector<size_t>& send_counts, void* recv,
    const std::vector<size_t>& recv_counts, DType dtype) {
  if (send_counts.size() != 1 || recv_counts.size() != 1 || send_counts[0] != recv_counts[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat(name_, ": all-to-all-v over one rank needs one equal send and receive count"));
  }
  return CopyDone(send, recv, send_counts[0], dtype);
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::Broadcast(void*, size_t, DType,
                                                                        int root) {
  if (root != 0) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": broadcast root ", root,
                                                   " is not a rank of a group of one"));
  }
  return std::unique_ptr<Work>(std::make_unique<DoneWork>());
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::Send(const void*, size_t, DType,
                                                                   int peer, int) {
  return absl::FailedPreconditionError(
      absl::StrCat(name_, ": send to rank ", peer, " in a group of one rank"));
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::Recv(void*, size_t, DType,
                                                                   int peer, int) {
  return absl::FailedPreconditionError(
      absl::StrCat(name_, ": receive from rank ", peer, " in a group of one rank"));
}

absl::StatusOr<std::unique_ptr<Work>> SingleRankCommunicator::Barrier() {
  return std::unique_ptr<Work>(std::make_unique<DoneWork>());
}

}  // namespace tessera::parallel
