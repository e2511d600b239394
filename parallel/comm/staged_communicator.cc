#include "parallel/comm/staged_communicator.h"

#include <algorithm>
#include <numeric>

#include "absl/synchronization/mutex.h"

namespace tessera::parallel {

// Host buffers for the operations in flight; grow-only, reused.
class StagingPool {
 public:
  using Buffer = std::unique_ptr<std::vector<char>>;

  // A buffer of at least `bytes` (at least one, so that data() is never
  // null): the largest free one, grown if it is too small, or a new one.
  Buffer Take(size_t bytes) {
    bytes = std::max<size_t>(bytes, 1);
    absl::MutexLock lock(&mu_);
    Buffer buffer;
    if (free_.empty()) {
      buffer = std::make_unique<std::vector<char>>();
    } else {
      auto largest = std::max_element(free_.begin(), free_.end(), [](const auto& a, const auto& b) {
        return a->size() < b->size();
      });
      buffer = std::move(*largest);
      free_.erase(largest);
    }
    if (buffer->size() < bytes) {
      held_ += bytes - buffer->size();
      buffer->resize(bytes);
    }
    return buffer;
  }
  void Return(Buffer buffer) {
    absl::MutexLock lock(&mu_);
    free_.push_back(std::move(buffer));
  }
  size_t held() const {
    absl::MutexLock lock(&mu_);
    return held_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<Buffer> free_ ABSL_GUARDED_BY(mu_);
  size_t held_ ABSL_GUARDED_BY(mu_) = 0;
};

namespace {

// The MPI operation on the staging buffer; on completion, `bytes` at
// `offset` of the buffer go back to `device_dst` (nothing when bytes is 0).
class StagedWork final : public Work {
 public:
  StagedWork(std::unique_ptr<Work> inner, Backend& backend, std::shared_ptr<StagingPool> pool,
             StagingPool::Buffer buffer, void* device_dst, size_t offset, size_t bytes)
      : inner_(std::move(inner)),
        backend_(backend),
        pool_(std::move(pool)),
        buffer_(std::move(buffer)),
        device_dst_(device_dst),
        offset_(offset),
        bytes_(bytes) {}

  ~StagedWork() override {
    // An operation that did not complete may still write into its buffer
    // (the job is ending with the error): leave that buffer alone.
    if (done_ && status_.ok()) {
      pool_->Return(std::move(buffer_));
    } else {
      (void)buffer_.release();
    }
  }

  absl::Status Wait(absl::Duration timeout) override {
    if (done_) return status_;
    status_ = inner_->Wait(timeout);
    done_ = true;
    if (status_.ok() && bytes_ > 0) {
      backend_.CopyToDevice(device_dst_, buffer_->data() + offset_, bytes_);
    }
    return status_;
  }
  bool Test() override { return done_ || inner_->Test(); }

 private:
  std::unique_ptr<Work> inner_;
  Backend& backend_;
  std::shared_ptr<StagingPool> pool_;
  StagingPool::Buffer buffer_;
  void* device_dst_;
  size_t offset_, bytes_;
  bool done_ = false;
  absl::Status status_;
};

size_t Sum(const std::vector<size_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), size_t{0});
}

}  // namespace

StagedCommunicator::StagedCommunicator(Communicator& group, Backend& backend)
    : group_(group), backend_(backend), pool_(std::make_shared<StagingPool>()) {}

StagedCommunicator::~StagedCommunicator() = default;

size_t StagedCommunicator::staging_bytes() const { return pool_->held(); }

namespace {

// Wraps the MPI operation just issued on `buffer`; a failed issue returns
// the buffer at once (MPI never saw it).
absl::StatusOr<std::unique_ptr<Work>> Staged(absl::StatusOr<std::unique_ptr<Work>> inner,
                                             Backend& backend,
                                             const std::shared_ptr<StagingPool>& pool,
                                             StagingPool::Buffer buffer, void* device_dst,
                                             size_t offset, size_t bytes) {
  if (!inner.ok()) {
    pool->Return(std::move(buffer));
    return inner.status();
  }
  return std::unique_ptr<Work>(new StagedWork(std::move(*inner), backend, pool, std::move(buffer),
                                              device_dst, offset, bytes));
}

void CopyIn(Backend& backend, char* host, const void* device, size_t bytes) {
  if (bytes > 0) backend.CopyToHost(host, device, bytes);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::AllReduce(void* data, size_t count,
                                                                    DType dtype, ReduceOp op) {
  const size_t bytes = count * DTypeSize(dtype);
  StagingPool::Buffer buffer = pool_->Take(bytes);
  char* host = buffer->data();
  CopyIn(backend_, host, data, bytes);
  return Staged(group_.AllReduce(host, count, dtype, op), backend_, pool_, std::move(buffer), data,
                0, bytes);
}

// In place on the host (recv = send + rank * block): one buffer of the input.
absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::ReduceScatter(const void* send,
                                                                        void* recv,
                                                                        size_t recv_count,
                                                                        DType dtype, ReduceOp op) {
  const size_t block = recv_count * DTypeSize(dtype), offset = block * rank();
  StagingPool::Buffer buffer = pool_->Take(block * size());
  char* host = buffer->data();
  CopyIn(backend_, host, send, block * size());
  return Staged(group_.ReduceScatter(host, host + offset, recv_count, dtype, op), backend_, pool_,
                std::move(buffer), recv, offset, block);
}

// In place on the host (send = recv + rank * block).
absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::AllGather(const void* send, void* recv,
                                                                    size_t send_count,
                                                                    DType dtype) {
  const size_t block = send_count * DTypeSize(dtype), offset = block * rank();
  StagingPool::Buffer buffer = pool_->Take(block * size());
  char* host = buffer->data();
  CopyIn(backend_, host + offset, send, block);
  return Staged(group_.AllGather(host + offset, host, send_count, dtype), backend_, pool_,
                std::move(buffer), recv, 0, block * size());
}

absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::AllToAll(const void* send, void* recv,
                                                                   size_t count_per_rank,
                                                                   DType dtype) {
  const size_t bytes = count_per_rank * DTypeSize(dtype) * size();
  StagingPool::Buffer buffer = pool_->Take(2 * bytes);  // [send | recv]
  char* host = buffer->data();
  CopyIn(backend_, host, send, bytes);
  return Staged(group_.AllToAll(host, host + bytes, count_per_rank, dtype), backend_, pool_,
                std::move(buffer), recv, bytes, bytes);
}

absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::AllToAllV(
    const void* send, const std::vector<size_t>& send_counts, void* recv,
    const std::vector<size_t>& recv_counts, DType dtype) {
  const size_t send_bytes = Sum(send_counts) * DTypeSize(dtype);
  const size_t recv_bytes = Sum(recv_counts) * DTypeSize(dtype);
  // [send | recv], the two at different addresses even when this rank sends
  // nothing: Open MPI takes an all-to-all-v whose send and receive buffers
  // coincide for an in-place one, the ranks' schedules then differ, and the
  // group's next collective hangs (a row-sharded table's rank that nobody
  // asks for rows and that asks for none did exactly that).
  const size_t recv_at = std::max<size_t>(send_bytes, 1);
  StagingPool::Buffer buffer = pool_->Take(recv_at + recv_bytes);
  char* host = buffer->data();
  CopyIn(backend_, host, send, send_bytes);
  return Staged(group_.AllToAllV(host, send_counts, host + recv_at, recv_counts, dtype), backend_,
                pool_, std::move(buffer), recv, recv_at, recv_bytes);
}

// Only the root's bytes travel out, and only the others' come back.
absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::Broadcast(void* data, size_t count,
                                                                    DType dtype, int root) {
  const size_t bytes = count * DTypeSize(dtype);
  StagingPool::Buffer buffer = pool_->Take(bytes);
  char* host = buffer->data();
  if (rank() == root) CopyIn(backend_, host, data, bytes);
  return Staged(group_.Broadcast(host, count, dtype, root), backend_, pool_, std::move(buffer),
                data, 0, rank() == root ? 0 : bytes);
}

absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::Send(const void* data, size_t count,
                                                               DType dtype, int peer, int tag) {
  const size_t bytes = count * DTypeSize(dtype);
  StagingPool::Buffer buffer = pool_->Take(bytes);
  char* host = buffer->data();
  CopyIn(backend_, host, data, bytes);
  return Staged(group_.Send(host, count, dtype, peer, tag), backend_, pool_, std::move(buffer),
                nullptr, 0, 0);
}

absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::Recv(void* data, size_t count,
                                                               DType dtype, int peer, int tag) {
  const size_t bytes = count * DTypeSize(dtype);
  StagingPool::Buffer buffer = pool_->Take(bytes);
  char* host = buffer->data();  // before the buffer moves into an argument
  return Staged(group_.Recv(host, count, dtype, peer, tag), backend_, pool_, std::move(buffer),
                data, 0, bytes);
}

absl::StatusOr<std::unique_ptr<Work>> StagedCommunicator::Barrier() { return group_.Barrier(); }

}  // namespace tessera::parallel
