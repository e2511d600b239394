#include "parallel/comm/watchdog_thread.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "parallel/comm/watchdog.h"
#include "runtime/base/errors.h"

namespace tessera::parallel {

CollectiveWatchdog::CollectiveWatchdog(absl::Duration poll_period, OnFailure on_failure)
    : poll_period_(poll_period), on_failure_(std::move(on_failure)) {}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

CollectiveWatchdog& CollectiveWatchdog::Process() {
  // Never destroyed: communicators destroyed during exit may still Forget.
  static CollectiveWatchdog* const watchdog = new CollectiveWatchdog();
  return *watchdog;
}

void CollectiveWatchdog::Watch(WatchedGroup& group, std::string what, int64_t seq, int peer,
                               absl::Duration timeout, std::unique_ptr<DeviceWork> work) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  entries_.push_back(
      Entry{&group, std::move(what), seq, peer, std::move(work), timeout, now, now + timeout});
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

absl::Status CollectiveWatchdog::Check(WatchedGroup& group) {
  absl::MutexLock lock(&mu_);
  return SweepLocked(&group, "the group's next operation");
}

void CollectiveWatchdog::Forget(const WatchedGroup& group) {
  absl::MutexLock lock(&mu_);
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [&](const Entry& e) { return e.group == &group; }),
                 entries_.end());
}

int64_t CollectiveWatchdog::watched() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(entries_.size());
}

int64_t CollectiveWatchdog::reported() const {
  absl::MutexLock lock(&mu_);
  return reported_;
}

absl::Status CollectiveWatchdog::SweepLocked(WatchedGroup* only, const char* who,
                                             int* failed_rank) {
  const absl::Time now = absl::Now();
  for (size_t i = 0; i < entries_.size();) {
    Entry& entry = entries_[i];
    if (only != nullptr && entry.group != only) {
      ++i;
      continue;
    }
    const absl::StatusOr<bool> done = entry.work->Poll();
    if (done.ok() && *done) {
      entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    if (done.ok() && now < entry.deadline) {
      ++i;
      continue;
    }
    // Past its deadline, or failed: this group is finished.
    WatchedGroup* group = entry.group;
    if (failed_rank != nullptr) *failed_rank = group->world_rank();
    std::string message =
        absl::StrCat("watchdog: ", entry.what, " on world rank ", group->world_rank(),
                     " (the compute stream waits for it; ", "caught by ", who, ") ");
    if (done.ok()) {
      absl::StrAppend(&message, "did not complete within ", absl::FormatDuration(entry.timeout),
                      " (in flight for ",
                      absl::FormatDuration(absl::Trunc(now - entry.start, absl::Milliseconds(1))),
                      ")");
    } else {
      absl::StrAppend(&message, "failed: ", done.status().message());
    }
    const std::string others = group->DescribeOthers(entry.seq, entry.peer);
    if (!others.empty()) absl::StrAppend(&message, "; ", others);
    const absl::Status aborted = group->AbortGroup();
    if (aborted.ok()) {
      absl::StrAppend(&message, "; the communicator of group '", group->group_name(),
                      "' was aborted");
    } else {
      absl::StrAppend(&message, "; aborting the communicator of group '", group->group_name(),
                      "' failed too: ", aborted.message());
    }
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [&](const Entry& e) { return e.group == group; }),
                   entries_.end());
    return CommunicationError(message);
  }
  return absl::OkStatus();
}

void CollectiveWatchdog::Loop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.AwaitWithTimeout(absl::Condition(&stop_), poll_period_);
    if (stop_) return;
    int world_rank = -1;
    const absl::Status failure = SweepLocked(nullptr, "the watchdog thread", &world_rank);
    if (failure.ok()) continue;
    ++reported_;
    // The default ends the process from this thread without an MPI call
    // (MPI_THREAD_FUNNELED), with the rank the group cached (asking MPI for
    // it would be a call too).
    if (!on_failure_) ExitJobFromThread(failure, world_rank);
    // Without the lock: a test's callback records.
    mu_.Unlock();
    on_failure_(failure);
    mu_.Lock();
  }
}

}  // namespace tessera::parallel
