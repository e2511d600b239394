// CommunicatorHostGroup: runtime/'s HostGroup (runtime/checkpoint/host_group.h)
// over a host-memory Communicator (the MPI backend), so checkpoint commit and
// metrics coordinate ranks without runtime/ knowing MPI.
//
// Variable-length AllGather is an all-gather of the lengths followed by an
// all-gather of every rank's bytes padded to the longest; Broadcast sends the
// length, then the bytes. Each call blocks until done or until the
// communicator's timeout (a CommunicationError naming the collective).
//
// The communicator is not owned and must outlive this object; like it, the
// group is used from one thread at a time.
#pragma once

#include <string>
#include <vector>

#include "parallel/comm/communicator.h"
#include "runtime/checkpoint/host_group.h"

namespace tessera::parallel {

class CommunicatorHostGroup final : public HostGroup {
 public:
  explicit CommunicatorHostGroup(Communicator* communicator) : comm_(communicator) {}

  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  absl::Status Barrier() override;
  absl::Status Broadcast(std::string* bytes, int root) override;
  absl::StatusOr<std::vector<std::string>> AllGather(const std::string& bytes) override;
  absl::StatusOr<int64_t> AllReduceMax(int64_t value) override;

 private:
  Communicator* comm_;
};

}  // namespace tessera::parallel
