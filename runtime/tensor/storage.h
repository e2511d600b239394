// Storage: one owned, aligned block of device memory. Tensors are views into it.
#pragma once

#include <cstddef>
#include <memory>

namespace tessera {

enum class Device : uint8_t { kCpu, kCuda };

class Storage {
 public:
  static constexpr size_t kAlignment = 64;

  // Allocates `bytes` of zero-filled host memory aligned to kAlignment.
  static std::shared_ptr<Storage> Allocate(size_t bytes, Device device = Device::kCpu);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage(void* data, size_t bytes, Device device) : data_(data), bytes_(bytes), device_(device) {}
  void* data_;
  size_t bytes_;
  Device device_;
};

}  // namespace tessera
