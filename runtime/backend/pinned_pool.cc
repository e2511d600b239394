#include "runtime/backend/pinned_pool.h"

#include "absl/strings/str_format.h"
#include "runtime/base/status.h"

namespace tessera {

PinnedBufferPool::PinnedBufferPool(Backend& backend, int count)
    : backend_(backend), slots_(static_cast<size_t>(count)) {
  TESSERA_CHECK(count >= 1);
}

PinnedBufferPool::~PinnedBufferPool() {
  for (Slot& slot : slots_) {
    WaitFor(slot);  // no copy may still use a buffer being freed
    if (slot.data != nullptr) backend_.FreePinnedHost(slot.data);
  }
}

void PinnedBufferPool::WaitFor(Slot& slot) {
  if (!slot.in_flight) return;
  backend_.HostWait(*slot.done);
  slot.in_flight = false;
}

absl::StatusOr<void*> PinnedBufferPool::Acquire(size_t bytes) {
  if (held_ >= 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "PinnedBufferPool: Acquire(%d bytes) while buffer %d is still held (Release it first)",
        bytes, held_));
  }
  Slot& slot = slots_[static_cast<size_t>(next_)];
  WaitFor(slot);
  if (slot.bytes < bytes || slot.data == nullptr) {
    if (slot.data != nullptr) backend_.FreePinnedHost(slot.data);
    slot.data = nullptr;
    slot.bytes = 0;
    void* fresh = nullptr;
    TESSERA_RETURN_IF_ERROR(backend_.AllocatePinnedHost(bytes, &fresh));
    slot.data = fresh;
    slot.bytes = bytes;
  }
  held_ = next_;
  next_ = (next_ + 1) % static_cast<int>(slots_.size());
  return slot.data;
}

void PinnedBufferPool::Release() {
  TESSERA_CHECK(held_ >= 0);
  Slot& slot = slots_[static_cast<size_t>(held_)];
  if (slot.done == nullptr) slot.done = backend_.CreateEvent();
  backend_.Record(*slot.done);
  slot.in_flight = true;
  held_ = -1;
}

size_t PinnedBufferPool::bytes_held() const {
  size_t total = 0;
  for (const Slot& slot : slots_) total += slot.bytes;
  return total;
}

}  // namespace tessera
