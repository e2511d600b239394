#include "launch/device_comm.h"

#include "absl/strings/str_format.h"
#include "parallel/comm/staged_communicator.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#ifdef TESSERA_HAVE_NCCL
#include "parallel/comm/nccl/nccl_communicator.h"
#endif

namespace tessera {

const char* DeviceCommName(DeviceComm kind) {
  switch (kind) {
    case DeviceComm::kNccl:
      return "NCCL";
    case DeviceComm::kStagedMpi:
      return "MPI staged through host memory";
    case DeviceComm::kHost:
      break;
  }
  return "MPI";
}

absl::StatusOr<DeviceComm> ChooseDeviceComm(const Backend& backend, int local_size,
                                            int device_count, const std::string& variable) {
  if (variable != "" && variable != "auto" && variable != "nccl" && variable != "mpi") {
    return UsageError(absl::StrFormat(
        "TESSERA_COMM=\"%s\": expected auto, nccl or mpi (docs/cuda.md)", variable));
  }
  if (backend.host_accessible()) return DeviceComm::kHost;
  if (variable == "mpi") return DeviceComm::kStagedMpi;
  const bool shared = local_size > device_count;
#ifdef TESSERA_HAVE_NCCL
  const bool have_nccl = true;
#else
  const bool have_nccl = false;
#endif
  if (variable == "nccl" && (shared || !have_nccl)) {
    return UsageError(absl::StrFormat(
        "TESSERA_COMM=nccl: %s; unset it (or set TESSERA_COMM=mpi) to stage the collectives "
        "through host memory over MPI",
        !have_nccl ? "this build has no NCCL"
                   : absl::StrFormat("%d ranks share %d GPU(s) on this node and NCCL refuses two "
                                     "ranks on one GPU",
                                     local_size, device_count)));
  }
  return shared || !have_nccl ? DeviceComm::kStagedMpi : DeviceComm::kNccl;
}

absl::StatusOr<std::unique_ptr<parallel::Communicator>> CreateDeviceCommunicator(
    DeviceComm kind, parallel::MpiCommunicator& group, Backend& backend) {
  switch (kind) {
    case DeviceComm::kHost:
      return nullptr;
    case DeviceComm::kStagedMpi:
      return std::make_unique<parallel::StagedCommunicator>(group, backend);
    case DeviceComm::kNccl:
      break;
  }
#ifdef TESSERA_HAVE_NCCL
  TESSERA_ASSIGN_OR_RETURN(auto nccl, parallel::NcclCommunicator::Create(group, &backend));
  return std::unique_ptr<parallel::Communicator>(std::move(nccl));
#else
  return absl::FailedPreconditionError("NCCL communicator requested in a build without NCCL");
#endif
}

}  // namespace tessera
