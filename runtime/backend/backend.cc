#include "runtime/backend/backend.h"

#include <cstdlib>

#include "absl/strings/str_format.h"

namespace tessera {

// A backend without page-locked memory (the CPU) stages through ordinary
// aligned host memory, the same as CpuBackend::Allocate.
absl::Status Backend::AllocatePinnedHost(size_t bytes, void** out) {
  constexpr size_t kAlignment = 64;
  if (bytes > (size_t{1} << 48)) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot allocate %d bytes of pinned host memory", bytes));
  }
  const size_t rounded = (bytes / kAlignment + 1) * kAlignment;  // never 0
  *out = std::aligned_alloc(kAlignment, rounded);
  if (*out == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("out of host memory allocating %d bytes of pinned host memory", bytes));
  }
  return absl::OkStatus();
}

void Backend::FreePinnedHost(void* ptr) { std::free(ptr); }

}  // namespace tessera
