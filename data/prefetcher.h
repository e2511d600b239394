// A bounded prefetch queue filled by one background I/O thread.
//
// Threading contract: `produce` and `finish` run only on the I/O thread (so a
// reader keeps all its HDF5 handles there); Next() is called from one consumer
// thread. The thread starts on the first Next(), so nothing is read before
// the consumer asks. It keeps at most `depth` batches ready. A failed produce
// is queued like a batch, so the consumer gets the error from the Next() that
// would have received that batch; the thread then stops and every later Next()
// returns the same error. The destructor stops the thread even while it waits
// on a full queue (it finishes the batch it is producing, if any).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/base/status.h"

namespace tessera {

template <typename Batch>
class Prefetcher {
 public:
  using Produce = std::function<absl::StatusOr<Batch>()>;

  Prefetcher(int depth, Produce produce, std::function<void()> finish = nullptr)
      : depth_(depth), produce_(std::move(produce)), finish_(std::move(finish)) {
    TESSERA_CHECK(depth_ >= 1);
  }

  ~Prefetcher() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Blocks until the next batch (or the error that replaced it) is ready.
  absl::StatusOr<Batch> Next() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!started_) {
      started_ = true;
      thread_ = std::thread([this] { Loop(); });
    }
    changed_.wait(lock, [this] { return !queue_.empty() || failed_; });
    if (queue_.empty()) return error_;
    Item item = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    changed_.notify_all();
    if (!item.status.ok()) return item.status;
    return std::move(item.batch);
  }

 private:
  void Loop() {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [this] { return stop_ || static_cast<int>(queue_.size()) < depth_; });
        if (stop_) break;
      }
      absl::StatusOr<Batch> batch = produce_();  // without the lock: this is the slow part
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) break;
      const bool failed = !batch.ok();
      if (failed) {
        error_ = batch.status();
        queue_.push_back(Item{error_, Batch()});
      } else {
        queue_.push_back(Item{absl::OkStatus(), *std::move(batch)});
      }
      changed_.notify_all();
      if (failed) {
        failed_ = true;
        break;
      }
    }
    if (finish_) finish_();
  }

  const int depth_;
  Produce produce_;
  std::function<void()> finish_;

  std::mutex mutex_;
  std::condition_variable changed_;
  // Status and batch apart (not a StatusOr) so Batch needs only be movable
  // and default-constructible, and GCC sees no maybe-uninitialized moves.
  struct Item {
    absl::Status status;
    Batch batch;
  };
  std::deque<Item> queue_;
  bool started_ = false;
  bool stop_ = false;
  bool failed_ = false;  // the thread queued an error and stopped
  absl::Status error_;
  std::thread thread_;
};

}  // namespace tessera
