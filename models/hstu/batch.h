// A jagged HSTU batch as the host builds it from users' histories: the
// users' input tokens concatenated, with what the model and the loss need
// per token. Nothing is padded.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "data/interaction_reader.h"

namespace tessera::hstu {

struct HstuBatch {
  std::vector<int64_t> offsets{0};       // [U + 1]: user u's tokens [offsets[u], offsets[u+1])
  std::vector<int32_t> items;            // [T] the item each token shows the model
  std::vector<int32_t> positions;        // [T] 0, 1, … within its user
  std::vector<int64_t> timestamps;       // [T] seconds
  std::vector<int64_t> next_timestamps;  // [U] the timestamp of the item after the last token
  std::vector<int32_t> targets;          // [T] the next item (training only)
  // [T] global sample * max_len + position: the counter of every random draw
  // for this token (dropout, negatives), the same under every layout.
  std::vector<uint64_t> token_keys;

  int64_t users() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t tokens() const { return offsets.back(); }
};

// Training on one user's events (oldest first, ids already checked): the
// last max_len + 1 events; token i shows event i and is trained to predict
// event i + 1. A user with fewer than 2 events adds a user of length 0.
// `sample`: the user's position in the global batch.
void AppendTrainingUser(std::span<const int64_t> items, std::span<const int64_t> timestamps,
                        int64_t max_len, uint64_t sample, HstuBatch& batch);

// Inference on one user's history (its last max_len events) towards an item
// at `next_timestamp` (the held-out target's time, for the time bias).
void AppendHistoryUser(std::span<const int64_t> items, std::span<const int64_t> timestamps,
                       int64_t next_timestamp, int64_t max_len, uint64_t sample,
                       HstuBatch& batch);

// Which of a replica's users one training micro-batch takes, and how.
struct MicroBatchSlice {
  int64_t micro_batch = 1;  // users per micro-batch
  int micro = 0;            // this micro-batch: rows k * M + micro of the share
  int replica = 0, num_replicas = 1;
  int64_t holdout = 0;  // events dropped from the end of every history
  int64_t max_len = 1;
};
// Micro-batch `slice.micro` of a replica's share of the global batch: row i
// of the share is global batch position i * R + r (the sample key).
HstuBatch TrainingMicroBatch(const InteractionBatch& share, const MicroBatchSlice& slice);

}  // namespace tessera::hstu
