// CUDA devices and device memory.
//
// A machine without a GPU, or with a driver older than the runtime, is a
// normal case for tessera (it trains on the CPU): DeviceCount() is then 0, not
// an error, and callers pick the CPU kernels.
#pragma once

#include <cstddef>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::cuda {

// Usable CUDA devices; 0 when there is no driver, the driver is too old for
// this runtime, or no device is visible.
int DeviceCount();

// Makes `device` current on the calling thread.
absl::Status SetDevice(int device);

// Waits for all work queued on the current device.
absl::Status Synchronize();

// One cudaMalloc'ed block on the current device, freed on destruction.
// Move-only. A zero-byte buffer holds no allocation and its copies are no-ops.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Create(size_t bytes);

  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

  // Synchronous copies of the first `bytes` bytes (bytes <= this->bytes()).
  absl::Status CopyFromHost(const void* host, size_t bytes);
  absl::Status CopyToHost(void* host, size_t bytes) const;

 private:
  DeviceBuffer(void* data, size_t bytes) : data_(data), bytes_(bytes) {}
  void Release();

  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace tessera::cuda
