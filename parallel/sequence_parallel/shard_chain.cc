#include "parallel/sequence_parallel/shard_chain.h"

#include <memory>

#include "runtime/base/status.h"

namespace tessera::parallel {

absl::Status ShardChain::SendToNext(const float* data, size_t count, int tag) {
  if (last()) return absl::OkStatus();
  return sp_->CompleteOnDevice(sp_->Send(data, count, DType::kF32, sp_->rank() + 1, tag));
}

absl::Status ShardChain::ReceiveFromPrevious(float* data, size_t count, int tag) {
  if (first()) return absl::OkStatus();
  return sp_->CompleteOnDevice(sp_->Recv(data, count, DType::kF32, sp_->rank() - 1, tag));
}

absl::Status ShardChain::SendToPrevious(const float* data, size_t count, int tag) {
  if (first()) return absl::OkStatus();
  return sp_->CompleteOnDevice(sp_->Send(data, count, DType::kF32, sp_->rank() - 1, tag));
}

absl::Status ShardChain::ReceiveFromNext(float* data, size_t count, int tag) {
  if (last()) return absl::OkStatus();
  return sp_->CompleteOnDevice(sp_->Recv(data, count, DType::kF32, sp_->rank() + 1, tag));
}

absl::Status ShardChain::Shift(const float* send, int to, float* recv, int from, size_t count,
                               int tag) {
  const int size = sp_->size();
  std::unique_ptr<Work> sending, receiving;
  if (from >= 0 && from < size) {
    TESSERA_ASSIGN_OR_RETURN(receiving, sp_->Recv(recv, count, DType::kF32, from, tag));
  }
  if (to >= 0 && to < size) {
    TESSERA_ASSIGN_OR_RETURN(sending, sp_->Send(send, count, DType::kF32, to, tag));
  }
  if (receiving) TESSERA_RETURN_IF_ERROR(receiving->StreamWait(sp_->timeout()));
  if (sending) TESSERA_RETURN_IF_ERROR(sending->StreamWait(sp_->timeout()));
  return absl::OkStatus();
}

absl::Status ShardChain::ShiftForward(const float* send, float* recv, size_t count, int tag) {
  return Shift(send, sp_->rank() + 1, recv, sp_->rank() - 1, count, tag);
}

absl::Status ShardChain::ShiftBackward(const float* send, float* recv, size_t count, int tag) {
  return Shift(send, sp_->rank() - 1, recv, sp_->rank() + 1, count, tag);
}

}  // namespace tessera::parallel
