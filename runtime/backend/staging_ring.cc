#include "runtime/backend/staging_ring.h"

#include <cstring>
#include <utility>

namespace tessera {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kMaxQueued = 256;

size_t RoundUp(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

}  // namespace

StagingRing::StagingRing(Backend& backend, size_t capacity)
    : backend_(backend), capacity_(RoundUp(capacity)) {}

StagingRing::~StagingRing() {
  // The newest event passing means every copy has: none still reads the
  // buffer being freed.
  if (!queued_.empty()) backend_.HostWait(*queued_.back().done);
  queued_.clear();
  if (data_ != nullptr) backend_.FreePinnedHost(data_);
}

void StagingRing::Reclaim(size_t begin, size_t end) {
  // The newest queued region overlapping [begin, end): waiting for it frees
  // it and everything queued before it.
  size_t newest = queued_.size();
  for (size_t i = 0; i < queued_.size(); ++i) {
    if (queued_[i].begin < end && begin < queued_[i].end) newest = i;
  }
  if (newest == queued_.size()) return;
  backend_.HostWait(*queued_[newest].done);
  ++host_waits_;
  for (size_t i = 0; i <= newest; ++i) {
    spare_events_.push_back(std::move(queued_.front().done));
    queued_.pop_front();
  }
}

bool StagingRing::Upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes > max_copy_bytes()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  if (off_) return false;
  if (bytes == 0) return true;
  if (data_ == nullptr) {
    void* buffer = nullptr;
    if (!backend_.AllocatePinnedHost(capacity_, &buffer).ok()) {
      off_ = true;
      return false;
    }
    data_ = static_cast<char*>(buffer);
  }
  // Many small copies could queue thousands of events before the ring wraps:
  // past kMaxQueued the oldest is retired (long passed, when the device keeps
  // up, so the wait returns at once).
  if (queued_.size() >= kMaxQueued) Reclaim(queued_.front().begin, queued_.front().end);
  size_t at = head_;
  if (at + bytes > capacity_) at = 0;
  const size_t end = at + RoundUp(bytes);
  Reclaim(at, end);
  std::memcpy(data_ + at, host_src, bytes);
  backend_.CopyToDeviceAsync(dst, data_ + at, bytes);
  Region region;
  region.begin = at;
  region.end = end;
  if (!spare_events_.empty()) {
    region.done = std::move(spare_events_.back());
    spare_events_.pop_back();
  } else {
    region.done = backend_.CreateEvent();
  }
  backend_.Record(*region.done);
  queued_.push_back(std::move(region));
  head_ = end >= capacity_ ? 0 : end;
  return true;
}

}  // namespace tessera
