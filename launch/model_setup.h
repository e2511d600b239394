// Pieces shared by `tessera train` and `tessera sample`: building the model
// a config names, and sampling a class-conditional image grid from it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/dit_moe/model.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/parameter.h"

namespace tessera {

struct BuiltModel {
  std::unique_ptr<ParameterStore> store;
  std::unique_ptr<dit_moe::DitMoe> model;
};

// Registers the model's parameters, lays them out (`layout`: gradient buckets
// for data parallelism) and initializes them from train.seed.
// `mp`: the model-parallel layout, if any (launch/model_parallel.h).
absl::StatusOr<BuiltModel> BuildModel(const RunConfig& config,
                                      const ParameterLayout& layout = {},
                                      const dit_moe::ModelParallel* mp = nullptr);

// Samples `per_class` images of every class with the model's current
// weights and writes them as a grid (one row per class) to `path`.
absl::Status WriteSampleGrid(dit_moe::DitMoe& model, const RunConfig& config,
                             const std::string& path, int per_class, int steps, float cfg_scale,
                             uint64_t seed);

// Sets the CPU threads from train.threads (0: this host's cores divided among
// the `local_ranks` MPI ranks on it).
void ConfigureThreads(const RunConfig& config, int local_ranks = 1);

}  // namespace tessera
