#include "launch/distributed.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "parallel/comm/mpi_check.h"
#include "runtime/backend/device_select.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#ifdef TESSERA_HAVE_CUDA
#include "runtime/kernels/cuda/device.h"
#endif

namespace tessera {
namespace {

// MPI's view of this rank: world from MPI_COMM_WORLD, local from the ranks
// that can share memory with it (one node).
absl::StatusOr<RankLayout> QueryLayout() {
  RankLayout layout;
  TESSERA_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &layout.world_rank));
  TESSERA_MPI(MPI_Comm_size(MPI_COMM_WORLD, &layout.world_size));
  MPI_Comm node = MPI_COMM_NULL;
  TESSERA_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, layout.world_rank,
                                  MPI_INFO_NULL, &node));
  const int rank_status = MPI_Comm_rank(node, &layout.local_rank);
  const int size_status = MPI_Comm_size(node, &layout.local_size);
  MPI_Comm_free(&node);
  TESSERA_MPI(rank_status);
  TESSERA_MPI(size_status);
  return layout;
}

// This rank's verdict, agreed by all: if any rank failed, every rank returns
// the lowest failing rank's message (so no rank goes on to wait in a
// collective for one that has left).
absl::Status AgreeOnRankEnvironment(const absl::Status& mine, int rank, int size) {
  int culprit = mine.ok() ? size : rank, failing = mine.ok() ? 0 : 1;
  TESSERA_MPI(MPI_Allreduce(MPI_IN_PLACE, &culprit, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  TESSERA_MPI(MPI_Allreduce(MPI_IN_PLACE, &failing, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
  if (culprit == size) return absl::OkStatus();
  char message[1024] = {};
  if (rank == culprit) {
    std::strncpy(message, std::string(mine.message()).c_str(), sizeof(message) - 1);
  }
  TESSERA_MPI(MPI_Bcast(message, sizeof(message), MPI_CHAR, culprit, MPI_COMM_WORLD));
  return UsageError(absl::StrFormat("%s [on world rank %d; %d of %d ranks disagree]", message,
                                    culprit, failing, size));
}

// The one start-up line, printed by world rank 0.
absl::Status PrintLayout(const Distributed& d, const RankLayout& layout,
                         const std::vector<std::string>& checked) {
  int counts[3] = {layout.local_rank == 0 ? 1 : 0, layout.local_size, -layout.local_size};
  TESSERA_MPI(MPI_Allreduce(MPI_IN_PLACE, &counts[0], 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
  TESSERA_MPI(MPI_Allreduce(MPI_IN_PLACE, &counts[1], 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  if (layout.world_rank != 0) return absl::OkStatus();
  const int nodes = counts[0], most = counts[1], fewest = -counts[2];
  const std::string per_node =
      most == fewest ? absl::StrFormat("%d", most) : absl::StrFormat("%d-%d", fewest, most);
  std::string job;
  if (const char* id = std::getenv("SLURM_JOB_ID")) {
    const char* restarts = std::getenv("SLURM_RESTART_COUNT");
    job = absl::StrFormat(", Slurm job %s restart %s", id, restarts ? restarts : "0");
  }
  std::printf("mpi: world %d ranks on %d node%s, local size %s, launcher %s%s, %s; checked %s\n",
              layout.world_size, nodes, nodes == 1 ? "" : "s", per_node.c_str(),
              std::string(LauncherName(d.launcher)).c_str(), job.c_str(),
              d.device < 0 ? "CPU" : "GPU = local rank",
              checked.empty() ? "no launcher variables" : absl::StrJoin(checked, " ").c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

// This rank's check of the launcher variables and its device choice.
absl::StatusOr<std::vector<std::string>> CheckThisRank(const RankLayout& layout,
                                                       const LauncherEnvironment& env,
                                                       bool uses_gpu, int& device) {
  TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> checked, CheckRankEnvironment(layout, env));
  device = -1;
#ifdef TESSERA_HAVE_CUDA
  if (uses_gpu) {
    TESSERA_ASSIGN_OR_RETURN(device, DeviceForLocalRank(uses_gpu, layout.local_rank,
                                                        layout.local_size, cuda::DeviceCount()));
    if (device >= 0) TESSERA_RETURN_IF_ERROR(cuda::SetDevice(device));
  }
#else
  (void)uses_gpu;
#endif
  return checked;
}

// The device communicators of the world, dense and expert groups.
absl::Status BuildDeviceGroups(Distributed& d) {
  const char* variable = std::getenv("TESSERA_COMM");
  TESSERA_ASSIGN_OR_RETURN(
      d.device_comm,
      ChooseDeviceComm(*d.backend, d.local_size, VisibleCudaDevices(), variable ? variable : ""));
  // Every rank picks the same kind (the rule depends on the node's ranks
  // and GPUs): a mix would deadlock creating the communicators below.
  int kind = static_cast<int>(d.device_comm), lowest = kind, highest = kind;
  TESSERA_MPI(MPI_Allreduce(&kind, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  TESSERA_MPI(MPI_Allreduce(&kind, &highest, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  if (lowest != highest) {
    return UsageError(
        "the ranks disagree on how device buffers travel (NCCL on nodes with a GPU per rank, "
        "MPI staged through host memory where ranks share a GPU): give every node as many GPUs "
        "as ranks, or set TESSERA_COMM=mpi on every rank (docs/cuda.md)");
  }
  const auto make = [&](parallel::MpiCommunicator& group) {
    return CreateDeviceCommunicator(d.device_comm, group, *d.backend);
  };
  TESSERA_ASSIGN_OR_RETURN(d.world_device, make(*d.world));
  TESSERA_ASSIGN_OR_RETURN(d.dense_device, make(*d.dense));
  if (d.expert) {
    TESSERA_ASSIGN_OR_RETURN(d.expert_device, make(*d.expert));
  }
  return absl::OkStatus();
}

}  // namespace

bool LaunchedUnderMpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  // A task of a multi-task srun step without PMI: MPI then starts a
  // singleton, and the rank check names the mismatch.
  const char* tasks = std::getenv("SLURM_STEP_NUM_TASKS");
  int count = 0;
  return std::getenv("SLURM_STEP_ID") != nullptr && tasks != nullptr &&
         absl::SimpleAtoi(tasks, &count) && count > 1;
}

absl::StatusOr<Distributed> StartMpi(bool uses_gpu) {
  Distributed d;
  TESSERA_ASSIGN_OR_RETURN(d.mpi, parallel::MpiRuntime::Init(nullptr, nullptr));
  TESSERA_ASSIGN_OR_RETURN(const RankLayout layout, QueryLayout());
  const LauncherEnvironment env = ReadLauncherEnvironment();
  d.launcher = DetectLauncher(env);
  d.local_rank = layout.local_rank;
  d.local_size = layout.local_size;
  auto checked = CheckThisRank(layout, env, uses_gpu, d.device);
  TESSERA_RETURN_IF_ERROR(
      AgreeOnRankEnvironment(checked.status(), layout.world_rank, layout.world_size));
  TESSERA_RETURN_IF_ERROR(PrintLayout(d, layout, *checked));
  return d;
}

absl::Status BuildGroups(const RunConfig& config, Distributed& d) {
  const int world = d.mpi->world_size(), rank = d.mpi->world_rank();
  TESSERA_ASSIGN_OR_RETURN(parallel::Mesh mesh, parallel::Mesh::Create(config, world, rank));
  d.mesh = std::make_unique<parallel::Mesh>(mesh);
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
  return BuildDeviceGroups(d);
}

}  // namespace tessera
