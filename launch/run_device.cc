#include "launch/run_device.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "launch/memory_fit.h"
#include "runtime/backend/device_select.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

namespace {

// Prints the GPU memory plan (rank 0) and refuses a run that cannot fit,
// before the backend takes any device memory.
absl::Status CheckGpuPlan(const RunConfig& config, int world_size, int device, bool leader) {
  TESSERA_ASSIGN_OR_RETURN(const auto memory, CudaMemoryInfo(device));
  const DeviceMemoryPlan plan = PlanDeviceMemory(config, world_size);
  if (leader) {
    std::printf("%s\n", FormatDeviceMemoryPlan(plan, memory.first, memory.second).c_str());
  }
  return CheckDeviceMemoryFits(plan, memory.first, device);
}

}  // namespace

bool RunUsesGpu(const RunConfig& config) {
  const auto device =
      ResolveDevice(config.train().device(), BuildHasCuda(), VisibleCudaDevices());
  return device.ok() && *device == Device::kCuda;
}

absl::Status SelectRunBackend(const RunConfig& config, Distributed& distributed) {
  if (distributed.backend != nullptr) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(
      const Device device,
      ResolveDevice(config.train().device(), BuildHasCuda(), VisibleCudaDevices()));
  if (device == Device::kCpu) {
    distributed.backend = &HostBackend();
    return absl::OkStatus();
  }
  const int world = distributed.mpi ? distributed.mpi->world_size() : 1;
  const int cuda_device = distributed.device >= 0 ? distributed.device : 0;
  TESSERA_RETURN_IF_ERROR(CheckGpuPlan(config, world, cuda_device, distributed.rank() == 0));
  TESSERA_ASSIGN_OR_RETURN(distributed.owned_backend, CreateCudaBackend(cuda_device));
  distributed.backend = distributed.owned_backend.get();
  distributed.device = cuda_device;
  return absl::OkStatus();
}

}  // namespace tessera
