// StagingRing: host-to-device copies from ordinary (pageable) host memory
// that return at once, without the host waiting for the device.
//
// A plain cudaMemcpyAsync from pageable memory may block the host until the
// stream reaches the copy (the driver stages it through its own pinned
// buffer), so every small upload in a step — token ids, offsets, slots —
// would be a host synchronisation. The ring copies the bytes into one pinned
// buffer (a memcpy on the host), queues the device copy from there on the
// compute stream and records an event behind it; the caller's memory is
// free again on return, as with a blocking copy.
//
// The rules (tested in tests/runtime/backend/staging_ring_test.cc):
//  - Copies take consecutive regions of the ring (64-byte aligned); one that
//    does not fit before the end starts again at the front.
//  - Before the host writes a region, every queued copy still reading an
//    overlapping region must have passed: the host waits for the newest such
//    copy's event (the stream runs copies in order, so the older ones have
//    passed too). While the device keeps up, the host never waits.
//  - At most 256 copies are queued: the 257th first waits for the oldest.
//  - A copy larger than max_copy_bytes() (a quarter of the ring) is not
//    taken: Upload returns false and the caller copies it another way
//    (those are loads and set-up, not per-step inputs).
//  - The pinned buffer is allocated by the first Upload; if that fails the
//    ring stays off and every Upload returns false.
//  - The destructor waits for every queued copy, then frees.
// Thread-safe (a mutex around each Upload): a backend is driven by one
// thread, but a staged collective's completion may upload from another.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "runtime/backend/backend.h"

namespace tessera {

class StagingRing {
 public:
  StagingRing(Backend& backend, size_t capacity);
  ~StagingRing();
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  // Copies `bytes` from `host_src` into the ring and queues their copy to
  // `dst` (device memory of the backend); `host_src` may be reused on return.
  // False, with nothing queued, when the ring does not take the copy (above).
  bool Upload(void* dst, const void* host_src, size_t bytes);

  size_t capacity() const { return capacity_; }
  size_t max_copy_bytes() const { return capacity_ / 4; }
  // Times the host waited for the device to free a region (tests, reports).
  int64_t host_waits() const {
    std::lock_guard<std::mutex> lock(mu_);
    return host_waits_;
  }
  // Copies queued whose region is not yet known to be free.
  size_t in_flight() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queued_.size();
  }

 private:
  struct Region {
    size_t begin = 0, end = 0;
    std::unique_ptr<Event> done;
  };
  // Waits until [begin, end) is free of queued copies.
  void Reclaim(size_t begin, size_t end);

  mutable std::mutex mu_;
  Backend& backend_;
  size_t capacity_;
  char* data_ = nullptr;
  bool off_ = false;
  size_t head_ = 0;                                // where the next region starts
  std::deque<Region> queued_;                      // oldest first
  std::vector<std::unique_ptr<Event>> spare_events_;
  int64_t host_waits_ = 0;
};

}  // namespace tessera
