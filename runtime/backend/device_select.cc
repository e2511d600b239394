#include "runtime/backend/device_select.h"

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

#ifdef TESSERA_HAVE_CUDA
#include "runtime/backend/cuda_backend.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/device.h"
#endif

namespace tessera {

bool BuildHasCuda() {
#ifdef TESSERA_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int VisibleCudaDevices() {
#ifdef TESSERA_HAVE_CUDA
  return cuda::DeviceCount();
#else
  return 0;
#endif
}

absl::StatusOr<Device> ResolveDevice(absl::string_view requested, bool build_has_cuda,
                                     int visible_cuda_devices) {
  const bool cuda_usable = build_has_cuda && visible_cuda_devices > 0;
  if (requested == "cpu") return Device::kCpu;
  if (requested == "auto" || requested.empty()) return cuda_usable ? Device::kCuda : Device::kCpu;
  if (requested != "cuda") {
    return UsageError(absl::StrFormat(
        "train.device: \"%s\" is not a device; use \"cpu\", \"cuda\" or \"auto\"", requested));
  }
  if (!build_has_cuda) {
    return UsageError(
        "train.device: \"cuda\" asked for, but this tessera was built without CUDA (configure "
        "with the CUDA toolkit at /usr/local/cuda and -DTESSERA_ENABLE_CUDA=ON)");
  }
  if (visible_cuda_devices <= 0) {
    return UsageError(
        "train.device: \"cuda\" asked for, but no CUDA device is usable here (no GPU, no driver, "
        "a driver older than the CUDA runtime, or CUDA_VISIBLE_DEVICES hides them all)");
  }
  return Device::kCuda;
}

absl::StatusOr<std::pair<size_t, size_t>> CudaMemoryInfo(int cuda_device) {
#ifdef TESSERA_HAVE_CUDA
  TESSERA_RETURN_IF_ERROR(cuda::SetDevice(cuda_device));
  size_t free_bytes = 0, total_bytes = 0;
  TESSERA_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  return std::make_pair(free_bytes, total_bytes);
#else
  (void)cuda_device;
  return UsageError("this tessera was built without CUDA");
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int cuda_device) {
#ifdef TESSERA_HAVE_CUDA
  auto backend = CudaBackend::Create(cuda_device);
  if (!backend.ok()) return backend.status();
  return std::unique_ptr<Backend>(std::move(*backend));
#else
  (void)cuda_device;
  return UsageError("this tessera was built without CUDA");
#endif
}

}  // namespace tessera
