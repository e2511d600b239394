#include "runtime/tensor/storage.h"

#include <cstdio>
#include <new>

namespace tessera {

absl::StatusOr<std::shared_ptr<Storage>> Storage::TryAllocate(size_t bytes, Backend& backend) {
  void* data = nullptr;
  if (absl::Status status = backend.Allocate(bytes, &data); !status.ok()) return status;
  backend.Memset(data, 0, bytes);
  return std::shared_ptr<Storage>(new Storage(data, bytes, &backend));
}

std::shared_ptr<Storage> Storage::Allocate(size_t bytes, Backend& backend) {
  absl::StatusOr<std::shared_ptr<Storage>> storage = TryAllocate(bytes, backend);
  if (!storage.ok()) {
    std::fprintf(stderr, "tessera: %s\n", std::string(storage.status().message()).c_str());
    throw std::bad_alloc();
  }
  return *std::move(storage);
}

Storage::~Storage() { backend_->Free(data_); }

}  // namespace tessera
