// The interactions reader: one user's history per sample, as jagged batches.
//
// A sample is user row u of a shard: its events [offsets[u], offsets[u+1]),
// oldest first. With max_len > 0 only the most recent max_len events are
// kept (the suffix). A batch concatenates its users' events with offsets, so
// nothing is padded. Events are read by hyperslab (one range per user and
// dataset); a shard's offsets and user_ids are read whole when it is first
// opened. Every event read is checked: item ids in [0, num_items) and
// timestamps non-decreasing within the user.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/batch_reader.h"
#include "data/shard_set.h"
#include "runtime/tensor/tensor.h"

namespace tessera {

struct InteractionReaderOptions : ReaderOptions {
  int64_t max_len = 0;    // keep each user's most recent max_len events; 0 = all
  int64_t num_items = 0;  // the model's item table: 0 or at least the data set's num_items
};

struct InteractionBatch {
  Tensor user_ids;    // i64 [B]
  Tensor offsets;     // i64 [B+1]: user i's events are [offsets[i], offsets[i+1]); offsets[0] = 0
  Tensor item_ids;    // i64 [E]: every user's events concatenated, oldest first
  Tensor timestamps;  // i64 [E]
  Tensor ratings;     // f32 [E]; undefined when the data set has no ratings
  int64_t num_events = 0;        // E
  std::vector<int64_t> indices;  // global user indices
  SamplerState state_after;      // sampler state once this batch is consumed
};

class InteractionReader : public BatchReader<InteractionBatch> {
 public:
  // Validates the options (max_len in [0, 2^24], num_items) and the manifest.
  static absl::StatusOr<std::unique_ptr<InteractionReader>> Open(
      const InteractionReaderOptions& options);

  absl::StatusOr<InteractionBatch> Next() override { return batches_.Next(); }
  int64_t num_samples() const override { return shards_.num_samples(); }  // users
  const DataManifest& manifest() const override { return shards_.manifest(); }

  int64_t num_items() const { return num_items_; }  // the data set's
  int64_t max_len() const { return options_.max_len; }

 private:
  InteractionReader(const InteractionReaderOptions& options, DataManifest manifest);
  // user u's events of `shard`, [begin, end) after the max_len cut.
  absl::StatusOr<std::pair<int64_t, int64_t>> EventRange(int shard, int64_t user);
  // Runs on the I/O thread.
  absl::StatusOr<InteractionBatch> Read(const std::vector<int64_t>& indices);
  // Whether every shard has ratings (from shard 0; a shard that differs is a
  // DataError).
  absl::StatusOr<bool> HasRatings(int shard);
  // The events `range` of user row `user` of `shard` into the batch at `at`.
  absl::Status ReadEvents(int shard, int64_t user, std::pair<int64_t, int64_t> range, int64_t at,
                          InteractionBatch& batch);

  InteractionReaderOptions options_;
  int64_t num_items_ = 0;
  // Owned by the I/O thread once it has started.
  ShardSet shards_;
  std::map<int, std::vector<int64_t>> offsets_;  // each opened shard's offsets [U+1]
  int has_ratings_ = -1;                         // -1 until shard 0 is opened
  // Last, so its thread is joined first.
  SampledBatches<InteractionBatch> batches_;
};

}  // namespace tessera
