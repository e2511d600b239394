#include "parallel/comm/mpi_work.h"

#include <sched.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "parallel/comm/mpi_check.h"
#include "runtime/base/errors.h"

namespace tessera::parallel {

bool MpiWork::Poll() {
  if (done_) return true;
  int flag = 0;
  const int code = MPI_Test(&request_, &flag, MPI_STATUS_IGNORE);
  if (code != MPI_SUCCESS) {
    error_ = MpiOperationFailed(*group_, info_, code, "MPI_Test");
    done_ = true;
    return true;
  }
  if (!flag) return false;
  ApplyFinish(finish_, group_->world_ranks.size());
  done_ = true;
  return true;
}

void ApplyFinish(const MpiFinish& finish, size_t group_size) {
  if (finish.move_bytes > 0) std::memmove(finish.move_to, finish.move_from, finish.move_bytes);
  if (finish.average != nullptr) {
    const float size = static_cast<float>(group_size);
    for (size_t i = 0; i < finish.average_count; ++i) finish.average[i] /= size;
  }
}

bool MpiWork::Test() { return Poll(); }

absl::Status MpiWork::Wait(absl::Duration timeout) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  absl::Duration elapsed;
  for (uint64_t poll = 0; !Poll(); ++poll) {
    if (poll % 64 == 0) {  // the clock costs more than an idle MPI_Test
      const absl::Time now = absl::Now();
      if (now >= deadline) return MpiOperationTimedOut(*group_, info_, timeout);
      elapsed = now - start;
    }
    if (elapsed > absl::Seconds(1)) {
      absl::SleepFor(absl::Microseconds(50));
    } else if (elapsed > absl::Milliseconds(1)) {
      sched_yield();
    }
  }
  return error_;
}

absl::Status MpiThreadWork::Wait(absl::Duration timeout) {
  if (!completion_->WaitUntil(absl::Now() + timeout)) {
    return MpiOperationTimedOut(*group_, info_, timeout);
  }
  const int code = completion_->code();
  return code == MPI_SUCCESS ? absl::OkStatus() : MpiOperationFailed(*group_, info_, code, call_);
}

namespace {

// Who to blame: the peer of a point-to-point operation, else the members
// that never entered the collective's sequence number.
std::string Blame(const MpiGroup& group, const OpInfo& info) {
  return info.peer >= 0
             ? group.watchdog->DescribePeer(*group.counter, group.world_ranks[info.peer])
             : group.watchdog->DescribeLateRanks(*group.counter, group.world_ranks, info.seq);
}

}  // namespace

absl::Status MpiOperationFailed(const MpiGroup& group, const OpInfo& info, int code,
                                const char* call) {
  const absl::Status mpi = MpiStatus(code, call, __FILE__, __LINE__);
  return CommunicationError(absl::StrCat(DescribeOp(group.name, group.world_ranks, info),
                                         " failed: ", mpi.message(), "; ", Blame(group, info)));
}

absl::Status MpiOperationTimedOut(const MpiGroup& group, const OpInfo& info,
                                  absl::Duration timeout) {
  return CommunicationError(absl::StrCat("watchdog: ", DescribeOp(group.name, group.world_ranks, info),
                                         " did not complete within ",
                                         absl::FormatDuration(timeout), "; ", Blame(group, info)));
}

}  // namespace tessera::parallel
