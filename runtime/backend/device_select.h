// Which backend a run trains on: `train.device` = "cpu" | "cuda" | "auto"
// ("" = "auto"). auto takes CUDA when this build has it and a device is
// visible, the CPU otherwise; "cuda" without either is a usage error that
// says which is missing.
//
// The pure rule (ResolveDevice) is separate from the machine's answers
// (BuildHasCuda, VisibleCudaDevices), so it is tested without a GPU.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/backend/backend.h"

namespace tessera {

// True when this binary was built with the CUDA backend.
bool BuildHasCuda();
// CUDA devices this process can use: 0 without CUDA in the build, without a
// driver, with a driver older than the runtime, or without a device.
int VisibleCudaDevices();

absl::StatusOr<Device> ResolveDevice(absl::string_view requested, bool build_has_cuda,
                                     int visible_cuda_devices);

// Free and total bytes of CUDA device `cuda_device` now; an error in a
// build without CUDA.
absl::StatusOr<std::pair<size_t, size_t>> CudaMemoryInfo(int cuda_device);

// A CudaBackend on `cuda_device` (made current on this thread); an error in
// a build without CUDA.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int cuda_device);

}  // namespace tessera
