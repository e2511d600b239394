// The distributed side of `tessera train`: MPI, the mesh, the communicators
// and data parallelism, set up only when an MPI launcher started us, so the
// single-process path never touches MPI. StartMpi also sets up the rank
// environment: local rank and size from MPI, cross-checked against the
// launcher's variables (launch/rank_environment.h), and the GPU by local rank.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "launch/device_comm.h"
#include "launch/rank_environment.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/data_parallel/data_parallel.h"
#include "parallel/mesh/mesh.h"
#include "runtime/config/config.pb.h"

namespace tessera {

// True when mpirun/mpiexec or srun (PMI/PMIx) started this process, and for
// a task of a multi-task srun step even without PMI (`srun --mpi=none`):
// rather than N independent runs writing one run directory, MPI_Init then
// fails (Open MPI explains that srun needs --mpi=pmix) or gives a singleton
// whose world size the rank check refuses.
bool LaunchedUnderMpi();

struct Distributed {
  std::unique_ptr<parallel::MpiRuntime> mpi;  // declared first: destroyed last
  std::unique_ptr<parallel::MpiCommunicator> world, dense, expert;
  std::unique_ptr<parallel::Mesh> mesh;
  // Ranks on this node (MPI_COMM_TYPE_SHARED), ordered by world rank.
  int local_rank = 0;
  int local_size = 1;
  Launcher launcher = Launcher::kNone;
  int device = -1;  // the CUDA device this rank uses; -1: the CPU
  // The backend this rank trains on (launch/run_device.h); set before the
  // model is built. owned_backend holds it unless it is the host's.
  Backend* backend = nullptr;
  std::unique_ptr<Backend> owned_backend;
  // A device run's sparse parameters (HSTU's item table) stay in host
  // memory (launch/run_device.h decides, every rank alike).
  bool sparse_on_host = false;
  // How device buffers travel (launch/device_comm.h), and the groups above
  // for them: null where the MPI group itself carries them (a CPU run).
  // Declared after the MPI groups, which they use: destroyed before them.
  DeviceComm device_comm = DeviceComm::kHost;
  std::unique_ptr<parallel::Communicator> world_device, dense_device, expert_device;
  // The communicator for device buffers over `group`'s ranks.
  static parallel::Communicator* OnDevice(const std::unique_ptr<parallel::MpiCommunicator>& group,
                                          const std::unique_ptr<parallel::Communicator>& device) {
    return device ? device.get() : group.get();
  }
  int rank() const { return mesh ? mesh->rank() : 0; }
  int size() const { return mesh ? mesh->shape().world : 1; }
};

// MPI_Init and the world size, before the config is validated against it;
// then the rank environment, agreed by every rank: when the launcher's
// variables disagree with MPI on any rank (or, for a run that `uses_gpu`, a
// node has more ranks than GPUs), every rank returns the same UsageError
// naming the variable, its value, MPI's value and the world rank. Only a run
// that uses the GPU binds one (DeviceForLocalRank); training runs on the CPU
// until the CUDA backend exists, hence the default. Rank 0 prints one line:
// world size, nodes, local size, launcher, device choice and the variables
// checked.
absl::StatusOr<Distributed> StartMpi(bool uses_gpu = false);

// The mesh for `config` (validated on every rank, identical messages) and
// the gradient-reduction groups: dense over dp x sp, experts over edp, and
// the world; with their device communicators for `backend` (set first).
absl::Status BuildGroups(const RunConfig& config, Distributed& distributed);

}  // namespace tessera
