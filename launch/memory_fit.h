// Before a model is built or data read: does the run fit in the memory this
// process may take (runtime/train/memory.h)? The estimates here are lower
// bounds from the config alone (parameters and AdamW state, stored
// activations, prefetched batches, the sample grid; the model family's size
// estimate, models/registry.h), in double precision so that no product of
// absurd sizes overflows. A plan that cannot fit is a
// UsageError (exit 2) naming its largest term and where it comes from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/config/config.h"

namespace tessera {

// One term of a plan: what it is, its bytes, and which config values make it.
struct MemoryTerm {
  std::string name;
  double bytes = 0;
  std::string why;
};

// The host check's terms for one rank: model state, activations, (in a bf16
// run) "bf16 weight copy" and "bf16 activation copies", prefetched batches.
// Empty when the model family has no estimate.
std::vector<MemoryTerm> TrainingMemoryTerms(const RunConfig& config, int world_size);

// Training: one rank's share of the model state and its activations and data,
// times the `local_ranks` processes that share this host.
absl::Status CheckTrainingMemoryFits(const RunConfig& config, int world_size, int local_ranks);

// A GPU run's share of its device (one rank per GPU): the same model-state
// and activation terms as the host check, one staged micro-batch of inputs
// and the backend's fixed workspace (cuBLASLt's 32 MiB and the scratch).
// In a bf16 run (train.precision=bf16) `bf16` adds the weights' bf16 copy
// and the activations' bf16 copies (ModelSizeEstimate's bf16 terms).
// Sparse parameters (HSTU's item table: its rows, optimizer state and at
// most one gradient per row, this rank's share of the table's group) are a
// term of their own, `sparse`, counted in the total only while they are
// planned on the device (`sparse_on_device`).
struct DeviceMemoryPlan {
  double state = 0, activations = 0, inputs = 0, bf16 = 0, sparse = 0;
  double workspace = 64.0 * (1 << 20);
  std::string state_why, activations_why, bf16_why, sparse_why;
  bool sparse_on_device = true;
  double total() const {
    return state + activations + inputs + bf16 + workspace + (sparse_on_device ? sparse : 0);
  }
};
DeviceMemoryPlan PlanDeviceMemory(const RunConfig& config, int world_size);
// Where the sparse parameters go (model.hstu.table_placement): HOST keeps
// them in host memory, DEVICE on the device, AUTO on the device when the
// whole plan fits in `free_bytes` and else in host memory. Sets
// plan.sparse_on_device and returns a sentence for the log saying where
// they went and why (empty for a model without them).
std::string PlaceSparseParameters(const RunConfig& config, DeviceMemoryPlan& plan,
                                  size_t free_bytes);
// One line for the log.
std::string FormatDeviceMemoryPlan(const DeviceMemoryPlan& plan, size_t free_bytes,
                                   size_t total_bytes);
// A UsageError naming the largest term when the plan exceeds `free_bytes`.
absl::Status CheckDeviceMemoryFits(const DeviceMemoryPlan& plan, size_t free_bytes, int device);

// tessera sample: the single-process model and `samples` generated samples
// (the grid) at once.
absl::Status CheckSamplingMemoryFits(const RunConfig& config, int64_t samples);

}  // namespace tessera
