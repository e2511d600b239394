#include "launch/rank_environment.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "runtime/base/errors.h"

namespace tessera {
namespace {

constexpr const char* kVariables[] = {
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "OMPI_MCA_ess_base_jobid",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "PMIX_RANK",
    "PMI_RANK",
    "PMI_SIZE",
};

const std::string* Find(const LauncherEnvironment& env, const std::string& name) {
  auto it = env.find(name);
  return it == env.end() ? nullptr : &it->second;
}

// Where a variable differs from MPI: "NAME=value, but MPI says <what> value".
absl::Status Mismatch(absl::string_view name, absl::string_view value, absl::string_view what,
                      int expected, Launcher launcher) {
  return UsageError(absl::StrFormat(
      "rank environment: %s=%s, but MPI says %s %d (launcher: %s). The launcher and MPI "
      "disagree about the job's layout; start tessera with `srun --mpi=pmix` or mpirun, "
      "and do not set launcher variables by hand",
      name, value, what, expected, LauncherName(launcher)));
}

// Compares the integer in `name` (when set) with `expected`.
absl::Status CompareInt(const LauncherEnvironment& env, const std::string& name,
                        absl::string_view what, int expected, Launcher launcher,
                        std::vector<std::string>& checked) {
  const std::string* value = Find(env, name);
  if (value == nullptr) return absl::OkStatus();
  int parsed = 0;
  if (!absl::SimpleAtoi(*value, &parsed) || parsed != expected) {
    return Mismatch(name, *value, what, expected, launcher);
  }
  checked.push_back(name);
  return absl::OkStatus();
}

absl::Status CheckSrunLocalSize(const LauncherEnvironment& env, int local_size,
                                std::vector<std::string>& checked) {
  std::string name = "SLURM_STEP_TASKS_PER_NODE";
  const std::string* list = Find(env, name);
  if (list == nullptr) list = Find(env, name = "SLURM_TASKS_PER_NODE");
  const std::string* node_id = Find(env, "SLURM_NODEID");
  if (list == nullptr || node_id == nullptr) return absl::OkStatus();
  int node = 0;
  auto counts = ParseSlurmTasksPerNode(*list);
  if (!counts.ok() || !absl::SimpleAtoi(*node_id, &node) || node < 0 ||
      node >= static_cast<int>(counts->size())) {
    return UsageError(absl::StrFormat(
        "rank environment: %s=%s with SLURM_NODEID=%s names no task count for this node "
        "(MPI says local size %d)",
        name, *list, *node_id, local_size));
  }
  if ((*counts)[node] != local_size) {
    return Mismatch(absl::StrCat(name, "[SLURM_NODEID=", node, "]"),
                    absl::StrCat((*counts)[node], " (", *list, ")"), "local size", local_size,
                    Launcher::kSrun);
  }
  checked.push_back(name);
  return absl::OkStatus();
}

}  // namespace

LauncherEnvironment ReadLauncherEnvironment() {
  LauncherEnvironment env;
  for (const char* name : kVariables) {
    if (const char* value = std::getenv(name)) env[name] = value;
  }
  return env;
}

Launcher DetectLauncher(const LauncherEnvironment& env) {
  if (env.count("OMPI_COMM_WORLD_SIZE") || env.count("OMPI_MCA_ess_base_jobid")) {
    return Launcher::kOpenMpi;
  }
  // srun sets SLURM_STEP_ID and SLURM_PROCID for every task it starts (with
  // or without --mpi=pmix); a batch shell has SLURM_PROCID but no step id.
  if (env.count("SLURM_STEP_ID") && env.count("SLURM_PROCID")) return Launcher::kSrun;
  const bool pmi = env.count("PMIX_RANK") || env.count("PMI_RANK");
  if (pmi || env.count("PMI_SIZE")) return Launcher::kOther;
  return Launcher::kNone;
}

absl::string_view LauncherName(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone:
      return "none";
    case Launcher::kOpenMpi:
      return "mpirun";
    case Launcher::kSrun:
      return "srun";
    case Launcher::kOther:
      return "PMI";
  }
  return "unknown";
}

absl::StatusOr<std::vector<int>> ParseSlurmTasksPerNode(absl::string_view value) {
  std::vector<int> counts;
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    int count = 0, repeat = 1;
    const size_t paren = item.find("(x");
    absl::string_view head = item.substr(0, paren);
    bool ok = absl::SimpleAtoi(head, &count) && count >= 0;
    if (ok && paren != absl::string_view::npos) {
      absl::string_view tail = item.substr(paren + 2);
      ok = absl::ConsumeSuffix(&tail, ")") && absl::SimpleAtoi(tail, &repeat) && repeat > 0;
    }
    if (!ok) {
      return UsageError(absl::StrFormat(
          "cannot read the Slurm tasks-per-node list \"%s\" (expected e.g. \"2(x3),1\")", value));
    }
    counts.insert(counts.end(), repeat, count);
  }
  return counts;
}

absl::StatusOr<std::vector<std::string>> CheckRankEnvironment(const RankLayout& mpi,
                                                              const LauncherEnvironment& env) {
  const Launcher launcher = DetectLauncher(env);
  std::vector<std::string> checked;
  if (launcher == Launcher::kOpenMpi) {
    const struct {
      const char* name;
      const char* what;
      int value;
    } fields[] = {{"OMPI_COMM_WORLD_RANK", "world rank", mpi.world_rank},
                  {"OMPI_COMM_WORLD_SIZE", "world size", mpi.world_size},
                  {"OMPI_COMM_WORLD_LOCAL_RANK", "local rank", mpi.local_rank},
                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "local size", mpi.local_size}};
    for (const auto& field : fields) {
      if (absl::Status s = CompareInt(env, field.name, field.what, field.value, launcher, checked);
          !s.ok()) {
        return s;
      }
    }
  } else if (launcher == Launcher::kSrun) {
    const std::string size_name =
        env.count("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
    const struct {
      std::string name;
      const char* what;
      int value;
    } fields[] = {{"SLURM_PROCID", "world rank", mpi.world_rank},
                  {size_name, "world size", mpi.world_size},
                  {"SLURM_LOCALID", "local rank", mpi.local_rank}};
    for (const auto& field : fields) {
      if (absl::Status s = CompareInt(env, field.name, field.what, field.value, launcher, checked);
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = CheckSrunLocalSize(env, mpi.local_size, checked); !s.ok()) return s;
  }
  return checked;
}

absl::StatusOr<int> DeviceForLocalRank(bool uses_gpu, int local_rank, int local_size,
                                       int device_count) {
  if (!uses_gpu || device_count <= 0) return -1;
  if (local_size <= device_count) return local_rank;
  if (device_count == 1) return 0;
  return UsageError(absl::StrFormat(
      "%d ranks on this node but %d GPUs visible: two ranks would share a GPU (NCCL refuses "
      "that); start one rank per GPU (--ntasks-per-node equal to --gpus-per-node)",
      local_size, device_count));
}

}  // namespace tessera
