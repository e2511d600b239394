// The watchdog thread for device collectives.
//
// A collective the host waits for (Work::Wait) has a deadline the waiting
// thread enforces. One the host only orders on the device (Work::StreamWait:
// the compute stream waits, the host goes on) has nobody waiting: if it
// hangs, the host next blocks in the backend's Synchronize at the step's end,
// forever. CollectiveWatchdog closes that hole, as PyTorch's NCCL watchdog
// does: a thread that polls every collective finished that way and, once one
// is past its group's timeout (parallel.collective_timeout_s, as Wait's) or has failed,
//   1. aborts the group's communicator (NCCL: ncclCommAbort, so that no
//      kernel spins on the GPU forever and a blocked Synchronize returns),
//   2. ends the job through `on_failure` with a CommunicationError (exit 5)
//      naming the collective (operation, bytes, sequence number), the group,
//      the world rank and what the rank records say about the others.
// The default `on_failure` is ExitJobFromThread (parallel/comm/watchdog.h):
// it prints the message and ends the process with _exit(5), making no MPI
// call, because it runs on the watchdog thread and MPI is initialised at
// MPI_THREAD_FUNNELED (only the main thread may call it; MPI_Abort from here
// is not promised to work). mpirun then ends the other ranks and exits 5.
// The host thread cannot be asked to do it instead: it may be blocked in the
// driver, which is what the watchdog is for.
//
// The thread driving a group still learns of a failure first when it uses
// the group again: Check(group) runs the same test there and returns the
// error instead (the caller's Status then ends the job); the thread does not
// report that collective a second time.
//
// Nothing here touches CUDA or NCCL: the device side is the two interfaces
// below (NcclGroup and its pending operations implement them), so the
// tracking, deadlines and abort path are tested on the CPU with fakes
// (tests/parallel/comm_watchdog/).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::parallel {

// A group whose device collectives are watched.
class WatchedGroup {
 public:
  virtual ~WatchedGroup() = default;
  virtual const std::string& group_name() const = 0;
  virtual int world_rank() const = 0;  // this rank
  // Ends the group's communicator (at most once; later calls do nothing):
  // every operation on it fails from then on. Called with the watchdog's
  // lock held, from either thread.
  virtual absl::Status AbortGroup() = 0;
  // What the group's members have reached, for the message (which ranks
  // never arrived at sequence number `seq`); may be empty.
  virtual std::string DescribeOthers(int64_t /*seq*/, int /*peer*/) const { return ""; }
};

// One operation the device runs, as the watchdog polls it.
class DeviceWork {
 public:
  virtual ~DeviceWork() = default;
  // true once complete, false while running, an error once it failed.
  // Called with the watchdog's lock held, from either thread.
  virtual absl::StatusOr<bool> Poll() = 0;
};

class CollectiveWatchdog {
 public:
  using OnFailure = std::function<void(const absl::Status&)>;

  // Nothing runs until the first Watch (then the thread starts).
  explicit CollectiveWatchdog(absl::Duration poll_period = absl::Milliseconds(50),
                              OnFailure on_failure = nullptr);  // null: ExitJobFromThread
  ~CollectiveWatchdog();  // stops the thread; watches left are dropped
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // The process's watchdog for device collectives (ExitJobFromThread on failure).
  static CollectiveWatchdog& Process();

  // Watches `work` of `group` from now until it completes: `timeout` from
  // now, or failed, it ends the job (see above). `what`: the operation as
  // DescribeOp words it; `seq` its sequence number (0 for Send/Recv) and
  // `peer` the other side's group rank (-1: none). `group` must call Forget
  // before it is destroyed.
  void Watch(WatchedGroup& group, std::string what, int64_t seq, int peer, absl::Duration timeout,
             std::unique_ptr<DeviceWork> work);
  // On the thread driving `group`: drops its completed work; for the first
  // one past its deadline or failed, aborts the group and returns the
  // CommunicationError (and forgets the group's other work).
  absl::Status Check(WatchedGroup& group);
  // Stops watching `group` (its destructor; nothing is aborted).
  void Forget(const WatchedGroup& group);

  // Work being watched (tests and messages).
  int64_t watched() const;
  // How many failures the thread reported through on_failure.
  int64_t reported() const;

 private:
  struct Entry {
    WatchedGroup* group;
    std::string what;
    int64_t seq;
    int peer;
    std::unique_ptr<DeviceWork> work;
    absl::Duration timeout;
    absl::Time start, deadline;
  };
  // Polls `entries` of `group` (or all, group null): drops completed ones;
  // returns the error for the first expired or failed one, after aborting
  // its group and dropping that group's entries (and, when `failed_rank` is
  // not null, sets it to the world rank the group gave).
  absl::Status SweepLocked(WatchedGroup* group, const char* who, int* failed_rank = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Loop();

  const absl::Duration poll_period_;
  const OnFailure on_failure_;  // null: ExitJobFromThread
  mutable absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t reported_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // started by the first Watch
};

}  // namespace tessera::parallel
