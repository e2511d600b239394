#include "launch/distributed.h"

#include <cstdlib>

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

bool LaunchedUnderMpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

absl::StatusOr<Distributed> StartMpi() {
  Distributed d;
  TESSERA_ASSIGN_OR_RETURN(d.mpi, parallel::MpiRuntime::Init(nullptr, nullptr));
  return d;
}

absl::Status BuildGroups(const RunConfig& config, Distributed& d) {
  const int world = d.mpi->world_size(), rank = d.mpi->world_rank();
  TESSERA_ASSIGN_OR_RETURN(parallel::Mesh mesh, parallel::Mesh::Create(config, world, rank));
  d.mesh = std::make_unique<parallel::Mesh>(mesh);
  const parallel::MeshShape& shape = d.mesh->shape();
  if (shape.tp > 1 || shape.sp > 1 || shape.ep > 1) {
    return UsageError(absl::StrFormat(
        "parallel.tp=%d, parallel.sp=%d, parallel.ep=%d: this build trains with data "
        "parallelism only (tensor, sequence and expert parallelism are not implemented yet); "
        "set them to 1",
        shape.tp, shape.sp, shape.ep));
  }
  const absl::Duration timeout = absl::Seconds(config.parallel().collective_timeout_s());
  TESSERA_ASSIGN_OR_RETURN(d.world, d.mpi->CreateWorld(timeout));
  // Every rank takes part in creating every group (MPI_Comm_split).
  TESSERA_ASSIGN_OR_RETURN(
      d.dense, d.world->CreateSubgroup(d.mesh->Group(parallel::GroupKind::kDataSequence),
                                       d.mesh->GroupName(parallel::GroupKind::kDataSequence)));
  const std::vector<int> expert = d.mesh->Group(parallel::GroupKind::kExpertData);
  if (expert != d.mesh->Group(parallel::GroupKind::kDataSequence)) {
    TESSERA_ASSIGN_OR_RETURN(
        d.expert,
        d.world->CreateSubgroup(expert, d.mesh->GroupName(parallel::GroupKind::kExpertData)));
  }
  return absl::OkStatus();
}

}  // namespace tessera
