// The model-parallel side of `tessera train`: the tp, sp, ep and tp x sp
// communicators a DiT-MoE layout needs, and gathering the sharded weights
// onto rank 0 for the files a run ends with (weights.h5, samples.png).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "launch/distributed.h"
#include "models/dit_moe/sublayers.h"
#include "runtime/nn/parameter.h"

namespace tessera {

// True when the layout splits the model (tp, sp or ep > 1), or when
// `config` has data-parallel replicas and asks for a collective over them
// inside the model (a MoeConfig anywhere in it with balance_scope
// GLOBAL_BATCH), or when its model has a row-sharded table
// (ModelFamily::table_shards) and the run more than one process. Data
// parallelism alone otherwise keeps the single-process layers and gets no
// groups.
bool NeedsModelParallel(const RunConfig& config, const parallel::MeshShape& shape);

struct ModelParallelGroups {
  std::unique_ptr<parallel::MpiCommunicator> tp, sp, ep, tp_sp, dp, table, table_replicas;
  // Their device communicators (Distributed::device_comm), none on the CPU;
  // destroyed before the MPI groups they use.
  std::vector<std::unique_ptr<parallel::Communicator>> on_device;
  parallel::ModelParallel view;  // the device communicators of the groups above
};

// Collective over the world: every rank creates every group.
absl::StatusOr<std::unique_ptr<ModelParallelGroups>> BuildModelParallelGroups(
    const RunConfig& config, const Distributed& distributed);

// Assembles the whole parameters from every rank's pieces (`values`, laid
// out as `local`'s flat buffer) into `full` (a single-process store of the
// same model) on world rank 0; `full` is ignored elsewhere. Each distinct
// piece is sent once, by its lowest-coordinate holder. Collective.
absl::Status GatherWeights(parallel::Communicator& world, const parallel::Mesh& mesh,
                           const ParameterStore& local, const float* values,
                           ParameterStore* full);

}  // namespace tessera
