// The sampler: which global sample indices each optimizer step reads.
//
// Epoch e visits every index once, in an order that depends only on
// (seed, e): a Fisher-Yates shuffle driven by Rng(seed, e). The sampler hands
// out whole global batches; replica r of R then takes the entries j of that
// batch with j % R == r (ReplicaShare). Because the global sequence does not
// depend on R, any data-parallel size and any micro-batching see the same
// samples per step, and a run resumed with a different R continues exactly
// where it stopped. A batch that runs past the end of an epoch continues with
// the next epoch's (reshuffled) order, so every batch is full.
//
// The whole state is SamplerState {epoch, position}: `position` global
// samples of `epoch` have been consumed. It is always normalised to
// 0 <= position < num_samples.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

struct SamplerState {
  int64_t epoch = 0;
  int64_t position = 0;

  bool operator==(const SamplerState& other) const {
    return epoch == other.epoch && position == other.position;
  }
};

class Sampler {
 public:
  // `num_samples` must be positive. With shuffle off, each epoch is
  // 0, 1, …, num_samples-1 (for evaluation).
  Sampler(int64_t num_samples, uint64_t seed, bool shuffle = true);

  // The next `global_batch` global indices; advances the state.
  std::vector<int64_t> NextGlobalBatch(int64_t global_batch);

  // Entries j of `global_batch` with j % num_replicas == replica.
  static std::vector<int64_t> ReplicaShare(const std::vector<int64_t>& global_batch, int replica,
                                           int num_replicas);

  const SamplerState& state() const { return state_; }
  // Resumes from a saved state. position == num_samples is accepted and
  // means the start of the next epoch; negative values or a position beyond
  // the data set (saved with a larger one) are a UsageError.
  absl::Status SetState(const SamplerState& state);

  // The order of `epoch`: a permutation of [0, num_samples).
  std::vector<int64_t> EpochOrder(int64_t epoch) const;

  int64_t num_samples() const { return num_samples_; }

 private:
  const std::vector<int64_t>& OrderOf(int64_t epoch);

  int64_t num_samples_;
  uint64_t seed_;
  bool shuffle_;
  SamplerState state_;
  int64_t cached_epoch_ = -1;  // the epoch `order_` belongs to
  std::vector<int64_t> order_;
};

}  // namespace tessera
