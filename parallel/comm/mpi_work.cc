#include "parallel/comm/mpi_work.h"

#include <sched.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parallel/comm/mpi_check.h"
#include "runtime/base/errors.h"

namespace tessera::parallel {

bool MpiWork::Poll() {
  if (done_) return true;
  int flag = 0;
  const int code = MPI_Test(&request_, &flag, MPI_STATUS_IGNORE);
  if (code != MPI_SUCCESS) {
    const absl::Status mpi = MpiStatus(code, "MPI_Test", __FILE__, __LINE__);
    const std::string who =
        info_.peer >= 0
            ? group_->watchdog->DescribePeer(*group_->counter, group_->world_ranks[info_.peer])
            : group_->watchdog->DescribeLateRanks(*group_->counter, group_->world_ranks, info_.seq);
    error_ = CommunicationError(absl::StrCat(DescribeOp(group_->name, group_->world_ranks, info_),
                                             " failed: ", mpi.message(), "; ", who));
    done_ = true;
    return true;
  }
  if (!flag) return false;
  if (finish_.move_bytes > 0) std::memmove(finish_.move_to, finish_.move_from, finish_.move_bytes);
  if (finish_.average != nullptr) {
    const float size = static_cast<float>(group_->world_ranks.size());
    for (size_t i = 0; i < finish_.average_count; ++i) finish_.average[i] /= size;
  }
  done_ = true;
  return true;
}

bool MpiWork::Test() { return Poll(); }

absl::Status MpiWork::Wait(absl::Duration timeout) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  absl::Duration elapsed;
  for (uint64_t poll = 0; !Poll(); ++poll) {
    if (poll % 64 == 0) {  // the clock costs more than an idle MPI_Test
      const absl::Time now = absl::Now();
      if (now >= deadline) return TimeoutError(timeout);
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

absl::Status MpiWork::TimeoutError(absl::Duration timeout) const {
  const std::string who =
      info_.peer >= 0
          ? group_->watchdog->DescribePeer(*group_->counter, group_->world_ranks[info_.peer])
          : group_->watchdog->DescribeLateRanks(*group_->counter, group_->world_ranks, info_.seq);
  return CommunicationError(
      absl::StrCat("watchdog: ", DescribeOp(group_->name, group_->world_ranks, info_),
                   " did not complete within ", absl::FormatDuration(timeout), "; ", who));
}

}  // namespace tessera::parallel
