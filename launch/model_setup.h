// Pieces shared by `tessera train` and `tessera sample`: building the model
// a config names (through the model registry, models/registry.h), and the
// CPU threads.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "models/registry.h"
#include "parallel/model_parallel.h"
#include "runtime/config/config.pb.h"
#include "runtime/backend/backend.h"
#include "runtime/nn/parameter.h"

namespace tessera {

struct BuiltModel {
  const ModelFamily* family = nullptr;
  std::unique_ptr<Model> model;
};

// The family the config names builds this rank's model: registers its
// parameters, lays them out (`layout`: gradient buckets for data
// parallelism) and initializes them from train.seed. `mp`: the
// model-parallel layout, if any (launch/model_parallel.h).
absl::StatusOr<BuiltModel> BuildModel(const RunConfig& config,
                                      const ParameterLayout& layout = {},
                                      const parallel::ModelParallel* mp = nullptr);

// Sets the CPU threads from train.threads (0: this host's cores divided among
// the `local_ranks` MPI ranks on it).
void ConfigureThreads(const RunConfig& config, int local_ranks = 1);

// Sets `backend`'s GEMM arithmetic from train.precision; a UsageError naming
// the field when the device cannot run it (e.g. bf16 on a CPU without
// AVX-512). Prints the device's note (emulated bf16) on the logging rank.
absl::Status ConfigurePrecision(const RunConfig& config, Backend& backend, bool leader = true);

}  // namespace tessera
