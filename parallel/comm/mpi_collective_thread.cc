#include "parallel/comm/mpi_collective_thread.h"

#include <utility>

namespace tessera::parallel {

bool MpiCompletion::WaitUntil(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(&done_), deadline);
}

bool MpiCompletion::done() const {
  absl::MutexLock lock(&mu_);
  return done_;
}

int MpiCompletion::code() const {
  absl::MutexLock lock(&mu_);
  return code_;
}

void MpiCompletion::Finish(int code) {
  absl::MutexLock lock(&mu_);
  code_ = code;
  done_ = true;
}

MpiCollectiveThread::MpiCollectiveThread(MPI_Comm comm) : comm_(comm) {
  thread_ = std::thread([this] { Loop(); });
}

MpiCollectiveThread::~MpiCollectiveThread() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

std::shared_ptr<MpiCompletion> MpiCollectiveThread::Post(std::function<int(MPI_Comm)> call) {
  auto completion = std::make_shared<MpiCompletion>();
  absl::MutexLock lock(&mu_);
  queue_.push_back({std::move(call), completion});
  return completion;
}

bool MpiCollectiveThread::HasWorkOrStop() const { return stop_ || !queue_.empty(); }

void MpiCollectiveThread::Loop() {
  while (true) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &MpiCollectiveThread::HasWorkOrStop));
      if (queue_.empty()) return;  // stopping, and every posted call ran
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task.completion->Finish(task.call(comm_));
  }
}

}  // namespace tessera::parallel
