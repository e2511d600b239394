// The distributed side of `tessera train`: MPI, the mesh, the communicators
// and data parallelism, set up only when an MPI launcher started us, so the
// single-process path never touches MPI.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/data_parallel/data_parallel.h"
#include "parallel/mesh/mesh.h"
#include "runtime/config/config.pb.h"

namespace tessera {

// True when mpirun/mpiexec or srun (PMI/PMIx) started this process.
bool LaunchedUnderMpi();

struct Distributed {
  std::unique_ptr<parallel::MpiRuntime> mpi;  // declared first: destroyed last
  std::unique_ptr<parallel::MpiCommunicator> world, dense, expert;
  std::unique_ptr<parallel::Mesh> mesh;
  int rank() const { return mesh ? mesh->rank() : 0; }
  int size() const { return mesh ? mesh->shape().world : 1; }
};

// MPI_Init and the world size, before the config is validated against it.
absl::StatusOr<Distributed> StartMpi();

// The mesh for `config` (validated on every rank, identical messages) and
// the gradient-reduction groups: dense over dp x sp, experts over edp.
absl::Status BuildGroups(const RunConfig& config, Distributed& distributed);

}  // namespace tessera
