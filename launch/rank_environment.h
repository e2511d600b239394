// The rank environment: what the launcher (srun, mpirun) told this process
// about its place in the job, checked against what MPI says, and the GPU the
// local rank picks. Pure functions over a snapshot of the environment, so the
// rules are testable without a launcher; launch/distributed.cc feeds them the
// real environment and MPI's answers.
//
// Why cross-check at all: a launcher and MPI that disagree (an `srun` without
// `--mpi=pmix`, which starts N independent singletons; mpirun inside an
// allocation whose SLURM_* values leak into the ranks; a hand-set
// CUDA_VISIBLE_DEVICES or OMP variable copied between jobs) make ranks pick
// the same GPU or the same data silently. Reporting the variable, its value
// and MPI's value turns that into a clear usage error (exit code 2).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera {

// This process's place in the job as MPI sees it. Local = the ranks that
// share this node (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)), ordered by
// world rank.
struct RankLayout {
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
};

// The launcher variables that matter here, name -> value (absent = unset).
using LauncherEnvironment = std::map<std::string, std::string>;

// Reads the variables the functions below consult from the process
// environment (OMPI_COMM_WORLD_*, OMPI_MCA_ess_base_jobid, SLURM_*, PMI*).
LauncherEnvironment ReadLauncherEnvironment();

enum class Launcher {
  kNone,     // no launcher variables: a single process
  kOpenMpi,  // Open MPI's mpirun/mpiexec (also when run inside a Slurm allocation)
  kSrun,     // srun started the MPI ranks directly (PMIx / PMI-2)
  kOther,    // some other PMI launcher (e.g. MPICH's hydra)
};

// Open MPI's variables win: under mpirun inside an allocation the ranks
// inherit the batch shell's SLURM_PROCID=0 / SLURM_LOCALID=0, which describe
// the batch step, not the rank.
Launcher DetectLauncher(const LauncherEnvironment& env);
absl::string_view LauncherName(Launcher launcher);  // "mpirun", "srun", ...

// Expands Slurm's compressed tasks-per-node list ("2(x3),1" -> {2, 2, 2, 1}).
absl::StatusOr<std::vector<int>> ParseSlurmTasksPerNode(absl::string_view value);

// Compares the detected launcher's variables with `mpi`:
//   mpirun: OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE;
//   srun:   SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS),
//           SLURM_LOCALID, and the SLURM_NODEID-th entry of
//           SLURM_STEP_TASKS_PER_NODE (else SLURM_TASKS_PER_NODE).
// Variables that are unset are skipped. The first disagreement is a
// UsageError naming the variable, its value and MPI's value. Returns the
// names that were compared.
absl::StatusOr<std::vector<std::string>> CheckRankEnvironment(const RankLayout& mpi,
                                                              const LauncherEnvironment& env);

// The CUDA device for a local rank when `device_count` devices are visible:
// -1 (the CPU) when the run does not use the GPU (`uses_gpu` false: no
// device is bound, and any number of CPU ranks may share the node) or
// without devices; the local rank when there is a device per local rank; 0
// when one device is visible (a launcher that binds one GPU per task via
// CUDA_VISIBLE_DEVICES, e.g. `srun --gpus-per-task=1`). A GPU run with more
// local ranks than several visible devices is a UsageError: two ranks would
// share a GPU, which NCCL refuses.
absl::StatusOr<int> DeviceForLocalRank(bool uses_gpu, int local_rank, int local_size,
                                       int device_count);

}  // namespace tessera
