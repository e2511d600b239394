#include "runtime/tensor/arena.h"

#include <algorithm>

namespace tessera {
namespace {
constexpr size_t kMinBlockBytes = size_t{1} << 20;
size_t AlignUp(size_t n) { return (n + Storage::kAlignment - 1) / Storage::kAlignment * Storage::kAlignment; }
}  // namespace

Arena::Arena(Backend& backend, size_t initial_bytes) : backend_(&backend) {
  if (initial_bytes > 0) {
    blocks_.push_back(Storage::Allocate(AlignUp(initial_bytes), backend));
    ++block_allocations_;
  }
}

size_t Arena::capacity_bytes() const {
  size_t total = 0;
  for (const auto& block : blocks_) total += block->bytes();
  return total;
}

Tensor Arena::AllocateUninitialized(DType dtype, Shape shape) {
  const size_t bytes = AlignUp(static_cast<size_t>(shape.numel()) * DTypeSize(dtype));
  if (blocks_.empty() || offset_ + bytes > blocks_.back()->bytes()) {
    if (!blocks_.empty()) used_in_full_blocks_ += offset_;
    // Grow by a quarter of what we have: the first step overshoots its peak
    // by at most ~25% (plus one block) before Reset() merges to the peak.
    const size_t block_bytes = std::max({bytes, kMinBlockBytes, capacity_bytes() / 4});
    blocks_.push_back(Storage::Allocate(block_bytes, *backend_));
    ++block_allocations_;
    offset_ = 0;
  }
  Tensor out(blocks_.back(), offset_, dtype, shape);
  offset_ += bytes;
  peak_bytes_ = std::max(peak_bytes_, used_bytes());
  return out;
}

Tensor Arena::Allocate(DType dtype, Shape shape) {
  Tensor out = AllocateUninitialized(dtype, shape);
  backend_->Memset(out.address(), 0, out.bytes());
  return out;
}

void Arena::Reset() {
  if (blocks_.size() > 1) {
    const size_t peak = AlignUp(peak_bytes_);
    blocks_.clear();
    blocks_.push_back(Storage::Allocate(peak, *backend_));
    ++block_allocations_;
  }
  offset_ = 0;
  used_in_full_blocks_ = 0;
}

}  // namespace tessera
