// The communicators a run's device buffers travel through (docs/cuda.md,
// "Multi-GPU runs"). Every group of the run is an MPI communicator first;
// host values always use it. Device buffers (gradient buckets, activations,
// tokens, ZeRO shards) use:
//   - on the CPU: the MPI group itself (no copy, no second communicator);
//   - on CUDA with a GPU per rank on every node: an NCCL communicator built
//     from the MPI group (one ncclUniqueId broadcast over it), ordered with
//     the backend's compute stream;
//   - on CUDA where ranks share a GPU (NCCL refuses that), or when
//     TESSERA_COMM=mpi: the MPI group with the buffers staged through host
//     memory (parallel/comm/staged_communicator.h).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/comm/mpi_communicator.h"
#include "runtime/backend/backend.h"

namespace tessera {

enum class DeviceComm { kHost, kNccl, kStagedMpi };

const char* DeviceCommName(DeviceComm kind);

// The kind for this rank's `backend`, with `local_size` ranks and
// `device_count` GPUs on its node. `variable` is TESSERA_COMM's value: ""
// or "auto" (the rule above), "nccl" (a UsageError where ranks share a GPU
// or the build has no NCCL) or "mpi"; anything else is a UsageError. A
// CPU backend is kHost whatever the variable says.
absl::StatusOr<DeviceComm> ChooseDeviceComm(const Backend& backend, int local_size,
                                            int device_count, const std::string& variable);

// The device communicator over `group`'s ranks: null for kHost (the group
// itself carries device buffers). Collective over the group for kNccl.
// `group` and `backend` must outlive the result.
absl::StatusOr<std::unique_ptr<parallel::Communicator>> CreateDeviceCommunicator(
    DeviceComm kind, parallel::MpiCommunicator& group, Backend& backend);

}  // namespace tessera
