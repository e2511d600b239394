// Ranks agree before any collective of size: every rank of an MPI job must
// run the same effective config with the same build. Ranks launched with
// different configs (MPMD, a stale file on one node, a different --set)
// would otherwise fail deep inside MPI, or not at all until the watchdog.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "runtime/config/config.h"

namespace tessera {

// ("train.steps", "20") for every scalar of the effective config (defaults
// filled in, nested names joined by '.'), then the build's identity
// ("build.compiler", ...).
std::vector<std::pair<std::string, std::string>> AgreementFields(const RunConfig& config);

// Collective over MPI_COMM_WORLD. Rank 0's fields are broadcast; each rank
// compares them with its own. On a mismatch every rank returns the same
// UsageError (exit 2) naming the first differing field, its value on rank 0
// and on the lowest rank that differs there.
absl::Status AgreeOnRunConfig(const RunConfig& config, int world_rank, int world_size);

}  // namespace tessera
