// The body of `tessera train`, callable without the command line (tests
// train a model registered from a test file through it).
#pragma once

#include "absl/status/status.h"
#include "launch/distributed.h"
#include "runtime/config/config.pb.h"

namespace tessera {

// Validates `config` for this world (ValidateRun), builds the model its
// model field names (models/registry.h), trains it and writes train.run_dir:
// config.textproto, metrics.jsonl, weights.h5 and the model's end-of-run
// output. `distributed`: what StartMpi set up, or a default Distributed for
// one process without MPI.
absl::Status TrainRun(const RunConfig& config, Distributed& distributed);

}  // namespace tessera
