// Arena: a bump allocator for one step's activations.
//
// Allocate() hands out views into large blocks; Reset() makes all of them
// invalid at once and, if the step needed more than one block, replaces the
// blocks by a single one as large as the peak, so a steady-state step
// allocates nothing.
//
// An arena hands out one backend's memory and carries that backend, so a
// layer reaches the ops for its activations through the arena it is given:
// `arena.backend().Gemm(...)`.
#pragma once

#include <memory>
#include <vector>

#include "runtime/tensor/tensor.h"

namespace tessera {

class Arena {
 public:
  // Host memory (the CPU backend).
  explicit Arena(size_t initial_bytes = 0) : Arena(HostBackend(), initial_bytes) {}
  explicit Arena(Backend& backend, size_t initial_bytes = 0);

  Backend& backend() const { return *backend_; }

  // A zero-filled tensor valid until the next Reset().
  Tensor Allocate(DType dtype, Shape shape);
  // An uninitialized tensor valid until the next Reset() (for outputs that
  // the caller fully overwrites).
  Tensor AllocateUninitialized(DType dtype, Shape shape);

  void Reset();

  size_t used_bytes() const { return used_in_full_blocks_ + offset_; }
  size_t peak_bytes() const { return peak_bytes_; }
  size_t capacity_bytes() const;
  // Blocks allocated since construction (stays constant in steady state).
  int64_t block_allocations() const { return block_allocations_; }

 private:
  Backend* backend_;
  std::vector<std::shared_ptr<Storage>> blocks_;
  size_t offset_ = 0;                // into blocks_.back()
  size_t used_in_full_blocks_ = 0;   // bytes handed out from earlier blocks
  size_t peak_bytes_ = 0;
  int64_t block_allocations_ = 0;
};

}  // namespace tessera
