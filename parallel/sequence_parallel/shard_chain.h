// ShardChain: point-to-point passing along the sp ranks of a replica, in
// sequence order (rank r holds the r-th shard of every sample). Mamba-2's
// sequence parallelism moves state this way instead of Ulysses' all-to-all:
// the SSM scan's final state and the conv's last K-1 inputs go to the next
// shard in the forward pass, and their gradients to the previous shard in
// the backward pass (models/mamba_hybrid/mixer.h; docs/parallelism.md).
//
// The first shard receives nothing from before it, the last sends nothing
// on: those calls are no-ops there. A Receive blocks until the neighbour's
// matching Send, so a chain of Receive, compute, Send runs the shards one
// after another; Shift* exchange with both neighbours at once (no waiting
// on a computation). Tags keep different exchanges of one step apart.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel {

class ShardChain {
 public:
  explicit ShardChain(Communicator& sp) : sp_(&sp) {}

  bool first() const { return sp_->rank() == 0; }
  bool last() const { return sp_->rank() + 1 == sp_->size(); }
  Communicator& group() const { return *sp_; }

  // `count` floats to the next shard / from the previous one.
  absl::Status SendToNext(const float* data, size_t count, int tag);
  absl::Status ReceiveFromPrevious(float* data, size_t count, int tag);
  // `count` floats to the previous shard / from the next one.
  absl::Status SendToPrevious(const float* data, size_t count, int tag);
  absl::Status ReceiveFromNext(float* data, size_t count, int tag);
  // Both at once: `send` to the next shard while `recv` comes from the
  // previous one (forward), or the reverse (backward).
  absl::Status ShiftForward(const float* send, float* recv, size_t count, int tag);
  absl::Status ShiftBackward(const float* send, float* recv, size_t count, int tag);

 private:
  absl::Status Shift(const float* send, int to, float* recv, int from, size_t count, int tag);
  Communicator* sp_;
};

}  // namespace tessera::parallel
