// PinnedBufferPool: a few reused pinned host buffers for staging copies
// between the host and one backend's device memory.
//
// The rules (tested in tests/runtime/backend/pinned_pool_test.cc):
//  - Acquire(bytes) hands out the next buffer in turn (a ring of `count`),
//    at least `bytes` long. If that buffer was handed out before, the host
//    first waits (Backend::HostWait) for the event its Release recorded, so
//    an asynchronous copy still reading or writing it has finished before
//    the host touches it again. A buffer that has never been released is not
//    waited for.
//  - Release() records an event on the compute stream after the copies the
//    caller queued from or to the buffer, and returns at once: with `count`
//    >= 2 the host fills the next buffer while the device copies this one.
//  - A buffer grows (after its wait: freed, then allocated larger) when a
//    request exceeds it, and never shrinks: a steady state allocates nothing.
//  - One buffer is out at a time: Acquire while one is held is an error
//    (the caller has lost track of its Release).
//  - The destructor waits for every event still outstanding, then frees.
// Used by one thread at a time (the one driving the backend).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/backend/backend.h"

namespace tessera {

class PinnedBufferPool {
 public:
  PinnedBufferPool(Backend& backend, int count);
  ~PinnedBufferPool();
  PinnedBufferPool(const PinnedBufferPool&) = delete;
  PinnedBufferPool& operator=(const PinnedBufferPool&) = delete;

  // The next buffer (see above), writable and readable by the host now.
  absl::StatusOr<void*> Acquire(size_t bytes);
  // The copies queued on the buffer Acquire returned last are all queued.
  void Release();

  Backend& backend() const { return backend_; }
  // Pinned bytes held (for the memory report and tests).
  size_t bytes_held() const;

 private:
  struct Slot {
    void* data = nullptr;
    size_t bytes = 0;
    std::unique_ptr<Event> done;  // recorded by Release; null before
    bool in_flight = false;       // `done` recorded and not yet waited for
  };
  void WaitFor(Slot& slot);

  Backend& backend_;
  std::vector<Slot> slots_;
  int next_ = 0;
  int held_ = -1;  // the slot Acquire returned, until Release
};

}  // namespace tessera
