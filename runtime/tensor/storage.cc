#include "runtime/tensor/storage.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "runtime/base/status.h"

namespace tessera {

std::shared_ptr<Storage> Storage::Allocate(size_t bytes, Device device) {
  // Device memory is owned by the CUDA runtime's own allocator, not by Storage.
  TESSERA_CHECK(device == Device::kCpu);
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* data = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (data == nullptr) throw std::bad_alloc();
  std::memset(data, 0, rounded == 0 ? kAlignment : rounded);
  return std::shared_ptr<Storage>(new Storage(data, bytes, device));
}

Storage::~Storage() { std::free(data_); }

}  // namespace tessera
