// Tensor: dtype + shape + device + a pointer into a Storage.
//
// A Tensor never owns memory by itself; it shares ownership of the Storage it
// views. Views are row-major and contiguous: slicing along the first
// dimension and reshaping make new views without copying.
//
// Two accessors to the elements: data<T>() is for host code and checks that
// the memory is host memory, so a host-only assumption fails loudly on the
// first GPU run instead of misreading memory; ptr<T>() is the address in the
// tensor's own memory, for passing to that memory's Backend ops.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/base/status.h"
#include "runtime/tensor/dtype.h"
#include "runtime/tensor/shape.h"
#include "runtime/tensor/storage.h"

namespace tessera {

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, DType dtype, Shape shape)
      : storage_(std::move(storage)), byte_offset_(byte_offset), dtype_(dtype), shape_(shape) {
    TESSERA_CHECK(storage_ == nullptr || byte_offset_ + bytes() <= storage_->bytes());
  }

  // A fresh zero-filled tensor with its own storage.
  static Tensor Empty(DType dtype, Shape shape, Backend& backend = HostBackend()) {
    const size_t bytes = static_cast<size_t>(shape.numel()) * DTypeSize(dtype);
    return Tensor(Storage::Allocate(bytes, backend), 0, dtype, shape);
  }

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int rank() const { return shape_.rank(); }
  int64_t numel() const { return shape_.numel(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  Device device() const { return storage_ ? storage_->device() : Device::kCpu; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t byte_offset() const { return byte_offset_; }

  bool on_host() const { return storage_ == nullptr || storage_->device() == Device::kCpu; }
  // The backend owning the memory (the host's for an undefined tensor).
  Backend& backend() const { return storage_ ? storage_->backend() : HostBackend(); }

  // Host code: the elements, checked to be in host memory.
  template <typename T>
  T* data() const {
    TESSERA_CHECK(DTypeOf<T>() == dtype_);
    TESSERA_CHECK(on_host());
    return static_cast<T*>(address());
  }
  void* raw() const {
    TESSERA_CHECK(on_host());
    return address();
  }
  // Backend ops: the address in the tensor's own memory (not dereferenceable
  // by the host unless on_host()).
  template <typename T>
  T* ptr() const {
    TESSERA_CHECK(DTypeOf<T>() == dtype_);
    return static_cast<T*>(address());
  }
  void* address() const {
    return storage_ ? static_cast<char*>(storage_->data()) + byte_offset_ : nullptr;
  }

  // Rows [begin, end) of the first dimension.
  Tensor Slice(int64_t begin, int64_t end) const {
    TESSERA_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0]);
    Shape shape = shape_;
    shape[0] = end - begin;
    const size_t row_bytes = shape_[0] == 0 ? 0 : bytes() / static_cast<size_t>(shape_[0]);
    return Tensor(storage_, byte_offset_ + static_cast<size_t>(begin) * row_bytes, dtype_, shape);
  }
  // The same elements under another shape of equal size.
  Tensor Reshape(Shape shape) const {
    TESSERA_CHECK(shape.numel() == numel());
    return Tensor(storage_, byte_offset_, dtype_, shape);
  }
  // A view of `shape` starting `element_offset` elements into this one.
  Tensor View(int64_t element_offset, Shape shape) const {
    TESSERA_CHECK(element_offset >= 0 && element_offset + shape.numel() <= numel());
    return Tensor(storage_, byte_offset_ + static_cast<size_t>(element_offset) * DTypeSize(dtype_),
                  dtype_, shape);
  }

  std::string DebugString() const {
    return std::string(DTypeName(dtype_)) + shape_.ToString();
  }

 private:
  std::shared_ptr<Storage> storage_;
  size_t byte_offset_ = 0;
  DType dtype_ = DType::kF32;
  Shape shape_;
};

}  // namespace tessera
