#include "data/sampler.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera {

Sampler::Sampler(int64_t num_samples, uint64_t seed, bool shuffle)
    : num_samples_(num_samples), seed_(seed), shuffle_(shuffle) {
  TESSERA_CHECK(num_samples > 0);
}

std::vector<int64_t> Sampler::EpochOrder(int64_t epoch) const {
  std::vector<int64_t> order(static_cast<size_t>(num_samples_));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (!shuffle_) return order;
  Rng rng(seed_, static_cast<uint64_t>(epoch));
  for (int64_t i = num_samples_ - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(i + 1)));
    std::swap(order[i], order[j]);
  }
  return order;
}

const std::vector<int64_t>& Sampler::OrderOf(int64_t epoch) {
  if (cached_epoch_ != epoch) {
    order_ = EpochOrder(epoch);
    cached_epoch_ = epoch;
  }
  return order_;
}

std::vector<int64_t> Sampler::NextGlobalBatch(int64_t global_batch) {
  TESSERA_CHECK(global_batch >= 0);
  std::vector<int64_t> batch;
  batch.reserve(static_cast<size_t>(global_batch));
  while (static_cast<int64_t>(batch.size()) < global_batch) {
    const std::vector<int64_t>& order = OrderOf(state_.epoch);
    const int64_t take =
        std::min(global_batch - static_cast<int64_t>(batch.size()), num_samples_ - state_.position);
    batch.insert(batch.end(), order.begin() + state_.position,
                 order.begin() + state_.position + take);
    state_.position += take;
    if (state_.position == num_samples_) {
      ++state_.epoch;
      state_.position = 0;
    }
  }
  return batch;
}

std::vector<int64_t> Sampler::ReplicaShare(const std::vector<int64_t>& global_batch, int replica,
                                           int num_replicas) {
  TESSERA_CHECK(num_replicas > 0 && 0 <= replica && replica < num_replicas);
  std::vector<int64_t> share;
  share.reserve(global_batch.size() / static_cast<size_t>(num_replicas) + 1);
  for (size_t j = static_cast<size_t>(replica); j < global_batch.size();
       j += static_cast<size_t>(num_replicas)) {
    share.push_back(global_batch[j]);
  }
  return share;
}

absl::Status Sampler::SetState(const SamplerState& state) {
  if (state.epoch < 0 || state.position < 0 || state.position > num_samples_) {
    return UsageError(absl::StrCat("sampler state (epoch ", state.epoch, ", position ",
                                   state.position, ") does not fit a data set of ", num_samples_,
                                   " samples"));
  }
  state_ = state;
  if (state_.position == num_samples_) {
    ++state_.epoch;
    state_.position = 0;
  }
  return absl::OkStatus();
}

}  // namespace tessera
