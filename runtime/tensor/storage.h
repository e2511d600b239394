// Storage: one owned, aligned block of a backend's memory. Tensors are views
// into it. The backend that allocated it frees it, and tells where it lives.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "runtime/backend/backend.h"

namespace tessera {

class Storage {
 public:
  static constexpr size_t kAlignment = 64;

  // `bytes` of zero-filled memory of `backend`, aligned to kAlignment.
  // Running out of memory throws std::bad_alloc after printing the
  // backend's message; TryAllocate returns that message as a Status instead.
  static std::shared_ptr<Storage> Allocate(size_t bytes, Backend& backend);
  static absl::StatusOr<std::shared_ptr<Storage>> TryAllocate(size_t bytes, Backend& backend);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  Backend& backend() const { return *backend_; }

 private:
  Storage(void* data, size_t bytes, Backend* backend)
      : data_(data), bytes_(bytes), backend_(backend), device_(backend->device()) {}
  void* data_;
  size_t bytes_;
  Backend* backend_;
  Device device_;
};

}  // namespace tessera
