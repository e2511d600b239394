// Before a model is built or data read: does the run fit in the memory this
// process may take (runtime/train/memory.h)? The estimates here are lower
// bounds from the config alone (parameters and AdamW state, stored
// activations, prefetched batches, the sample grid; the model family's size
// estimate, models/registry.h), in double precision so that no product of
// absurd sizes overflows. A plan that cannot fit is a
// UsageError (exit 2) naming its largest term and where it comes from.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/config/config.h"

namespace tessera {

// Training: one rank's share of the model state and its activations and data,
// times the `local_ranks` processes that share this host.
absl::Status CheckTrainingMemoryFits(const RunConfig& config, int world_size, int local_ranks);

// tessera sample: the single-process model and `samples` generated samples
// (the grid) at once.
absl::Status CheckSamplingMemoryFits(const RunConfig& config, int64_t samples);

}  // namespace tessera
