// A thread that runs one group's blocking MPI collectives, in the order they
// were posted, on a communicator of its own.
//
// Why: Open MPI 4.1 runs non-blocking collectives with libnbc, whose in-place
// all-reduce (a binomial reduce + broadcast) takes 1.4-2.2x as long as the
// tuned blocking MPI_Allreduce at >= 1 MiB. A blocking call made by this
// thread runs at the blocking call's speed and progresses on its own, so the
// caller's backward pass keeps computing while it runs (no MPI_Test polling
// needed). It needs MPI_THREAD_MULTIPLE: the caller's thread makes other MPI
// calls at the same time.
//
// Ordering: calls run one at a time in posting order, on `comm` — a duplicate
// of the group's communicator used by nobody else — so the group's contract
// (every rank posts the same collectives in the same order) carries over, and
// the caller's own non-blocking calls on the original communicator cannot
// interleave with these inside MPI.
//
// A posted call that never returns (a dead peer) keeps the thread busy; the
// caller's Wait deadline still fires and the job ends through AbortJob.
// Destroy the thread only once every posted call has returned (the
// destructor joins it).
#pragma once

#include <mpi.h>

#include <deque>
#include <functional>
#include <memory>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::parallel {

// The result of one posted call, shared by the poster and the thread.
class MpiCompletion {
 public:
  // Blocks until the call returned or `deadline` passed; true if it returned.
  bool WaitUntil(absl::Time deadline);
  bool done() const;
  int code() const;  // MPI's return code; valid once done()
  void Finish(int code);

 private:
  mutable absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  int code_ ABSL_GUARDED_BY(mu_) = MPI_SUCCESS;
};

class MpiCollectiveThread {
 public:
  explicit MpiCollectiveThread(MPI_Comm comm);
  ~MpiCollectiveThread();
  MpiCollectiveThread(const MpiCollectiveThread&) = delete;
  MpiCollectiveThread& operator=(const MpiCollectiveThread&) = delete;

  // Runs `call(comm)` after every call posted before it and reports its
  // return code to the returned completion. `call` runs on the thread: what
  // it touches must stay valid until the completion is done.
  std::shared_ptr<MpiCompletion> Post(std::function<int(MPI_Comm)> call);

 private:
  struct Task {
    std::function<int(MPI_Comm)> call;
    std::shared_ptr<MpiCompletion> completion;
  };
  void Loop();
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const MPI_Comm comm_;
  mutable absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tessera::parallel
