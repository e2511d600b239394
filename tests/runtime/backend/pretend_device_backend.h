// A device for tests on machines without a GPU: the CPU backend's ops on
// host memory that calls itself a CUDA device's. Host reads of its buffers
// through Tensor::data<T>() abort, as on a GPU, and every copy between host
// and "device" checks that its device side lies in a buffer this backend
// allocated and its host side does not, so host memory handed where device
// memory belongs (or the reverse) fails the test instead of working by luck.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "absl/synchronization/mutex.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/staging_ring.h"
#include "runtime/base/status.h"

namespace tessera {

class PretendDeviceBackend : public CpuBackend {
 public:
  Device device() const override { return Device::kCuda; }

  absl::Status Allocate(size_t bytes, void** out) override {
    TESSERA_RETURN_IF_ERROR(CpuBackend::Allocate(bytes, out));
    absl::MutexLock lock(&mu_);
    buffers_[reinterpret_cast<uintptr_t>(*out)] = bytes;
    ++allocations_;
    return absl::OkStatus();
  }
  void Free(void* ptr) override {
    {
      absl::MutexLock lock(&mu_);
      buffers_.erase(reinterpret_cast<uintptr_t>(ptr));
    }
    CpuBackend::Free(ptr);
  }
  // The GEMM peak measurement sizes its product for a GPU (n = 8192: over a
  // TFLOP, minutes of CPU time): the pretend device skips products of that
  // size (no test model comes near it) so that runs on it stay fast.
  void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override {
    if (m >= 8192 && n >= 8192 && k >= 8192) return;
    CpuBackend::Gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  // Through a staging ring, as CudaBackend's (its copies and events are the
  // CPU's, so they have passed at once; what this checks is that the bytes
  // a run uploads arrive through it intact).
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override {
    CheckSides(dst, host_src, bytes, "CopyToDevice");
    if (staging_.Upload(dst, host_src, bytes)) return;
    CpuBackend::CopyToDevice(dst, host_src, bytes);
  }
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override {
    CheckSides(src, host_dst, bytes, "CopyToHost");
    {
      absl::MutexLock lock(&mu_);
      bytes_to_host_ += bytes;
      ++reads_.copies_to_host;
    }
    CpuBackend::CopyToHost(host_dst, src, bytes);
  }
  // The host's waits for the device, counted: on a GPU each one stalls the
  // host until the stream gets there.
  void HostWait(const Event& event) override {
    {
      absl::MutexLock lock(&mu_);
      ++reads_.host_waits;
    }
    CpuBackend::HostWait(event);
  }
  absl::Status Synchronize() override {
    {
      absl::MutexLock lock(&mu_);
      ++reads_.synchronizes;
    }
    return CpuBackend::Synchronize();
  }

  // Pinned host memory is host memory (never one of the device buffers);
  // counted, with the asynchronous copies, so tests see the pinned paths used.
  absl::Status AllocatePinnedHost(size_t bytes, void** out) override {
    TESSERA_RETURN_IF_ERROR(CpuBackend::AllocatePinnedHost(bytes, out));
    absl::MutexLock lock(&mu_);
    ++pinned_allocations_;
    return absl::OkStatus();
  }
  void CopyToDeviceAsync(void* dst, const void* host_src, size_t bytes) override {
    {
      absl::MutexLock lock(&mu_);
      ++async_copies_;
    }
    CheckSides(dst, host_src, bytes, "CopyToDeviceAsync");
    CpuBackend::CopyToDevice(dst, host_src, bytes);
  }
  void CopyToHostAsync(void* host_dst, const void* src, size_t bytes) override {
    {
      absl::MutexLock lock(&mu_);
      ++async_copies_;
    }
    CopyToHost(host_dst, src, bytes);
  }
  int64_t pinned_allocations() const {
    absl::MutexLock lock(&mu_);
    return pinned_allocations_;
  }
  int64_t async_copies() const {
    absl::MutexLock lock(&mu_);
    return async_copies_;
  }

  // Device allocations so far (a steady-state step makes none).
  int64_t allocations() const {
    absl::MutexLock lock(&mu_);
    return allocations_;
  }

  // Whether [ptr, ptr + bytes) lies inside one buffer of this backend.
  bool Owns(const void* ptr, size_t bytes) const {
    const uintptr_t at = reinterpret_cast<uintptr_t>(ptr);
    absl::MutexLock lock(&mu_);
    auto it = buffers_.upper_bound(at);
    if (it == buffers_.begin()) return false;
    --it;
    return at + bytes <= it->first + it->second;
  }
  // Bytes copied to the host so far (staging traffic in tests).
  size_t bytes_to_host() const {
    absl::MutexLock lock(&mu_);
    return bytes_to_host_;
  }
  // Every way the host waits on the device, counted so far (copies to the
  // host, asynchronous ones included, block until the bytes arrive), and
  // how many of the event waits were the upload ring's reuse of a region
  // (StagingRing: for a copy queued long before, as a rule).
  struct HostWaits {
    int64_t copies_to_host = 0, host_waits = 0, synchronizes = 0, staging_waits = 0;
  };
  HostWaits host_waits() const {
    // The ring's count first, outside mu_: the ring holds its lock while it
    // calls HostWait, which takes mu_.
    const int64_t staging_waits = staging_.host_waits();
    absl::MutexLock lock(&mu_);
    HostWaits waits = reads_;
    waits.staging_waits = staging_waits;
    return waits;
  }

 private:
  void CheckSides(const void* device, const void* host, size_t bytes, const char* what) const {
    if (bytes == 0) return;
    if (!Owns(device, bytes) || Owns(host, 1)) {
      std::fprintf(stderr, "PretendDeviceBackend::%s: %s\n", what,
                   Owns(host, 1) ? "the host side is device memory"
                                 : "the device side is not device memory");
      std::abort();
    }
  }

  mutable absl::Mutex mu_;
  std::map<uintptr_t, size_t> buffers_ ABSL_GUARDED_BY(mu_);
  size_t bytes_to_host_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t pinned_allocations_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t async_copies_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t allocations_ ABSL_GUARDED_BY(mu_) = 0;
  HostWaits reads_ ABSL_GUARDED_BY(mu_);
  // Declared last: destroyed first, while the backend it calls is whole.
  StagingRing staging_{*this, size_t{1} << 20};
};

}  // namespace tessera
