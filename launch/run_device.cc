#include "launch/run_device.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "launch/memory_fit.h"
#include "runtime/backend/device_select.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

namespace {

// Places the sparse parameters (this rank's plan; AgreeOnSparsePlacement
// makes every rank's the same), prints the GPU memory plan (rank 0) and
// refuses a run that cannot fit, before the backend takes any device memory.
absl::Status CheckGpuPlan(const RunConfig& config, Distributed& distributed, int world_size,
                          int device, bool leader) {
  TESSERA_ASSIGN_OR_RETURN(const auto memory, CudaMemoryInfo(device));
  DeviceMemoryPlan plan = PlanDeviceMemory(config, world_size);
  const std::string placed = PlaceSparseParameters(config, plan, memory.first);
  distributed.sparse_on_host = plan.sparse > 0 && !plan.sparse_on_device;
  if (leader) {
    std::printf("%s\n", FormatDeviceMemoryPlan(plan, memory.first, memory.second).c_str());
    if (!placed.empty()) std::printf("%s\n", placed.c_str());
  }
  return CheckDeviceMemoryFits(plan, memory.first, device);
}

}  // namespace

absl::Status AgreeOnSparsePlacement(Distributed& distributed) {
  // A CPU run (every rank's: BuildGroups refuses a mixed one) has nothing to agree on.
  if (distributed.world == nullptr || distributed.backend == nullptr ||
      distributed.backend->device() == Device::kCpu) {
    return absl::OkStatus();
  }
  int64_t on_host = distributed.sparse_on_host ? 1 : 0;
  TESSERA_RETURN_IF_ERROR(distributed.world->Complete(
      distributed.world->AllReduce(&on_host, 1, DType::kI64, parallel::ReduceOp::kMax)));
  if (on_host != 0 && !distributed.sparse_on_host && distributed.rank() == 0) {
    std::printf("the item table stays in host memory: another rank's device has no room for it\n");
  }
  distributed.sparse_on_host = on_host != 0;
  return absl::OkStatus();
}

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
  TESSERA_RETURN_IF_ERROR(
      CheckGpuPlan(config, distributed, world, cuda_device, distributed.rank() == 0));
  TESSERA_ASSIGN_OR_RETURN(distributed.owned_backend, CreateCudaBackend(cuda_device));
  distributed.backend = distributed.owned_backend.get();
  distributed.device = cuda_device;
  return absl::OkStatus();
}

}  // namespace tessera
