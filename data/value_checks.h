// The rules on values (not shapes) of every schema, applied by the readers to
// each row they read and by `tessera data verify` to whole shards
// (docs/data-format.md, "Values").
//
//   images        labels in [0, num_classes)
//   tokens        tokens in [0, vocab_size); loss_mask entries 0 or 1
//   interactions  item_ids in [0, num_items); timestamps never decrease
//                 within one user (ties allowed); ratings finite
//
// The limits come from the manifest's attributes. Every error is a DataError
// naming the shard file, the dataset, the entry and the rule.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/manifest.h"
#include "data/schema.h"

namespace tessera {

// The manifest attributes the value rules use; 0 where the schema has none.
struct ValueLimits {
  int64_t num_classes = 0;  // images
  int64_t vocab_size = 0;   // tokens
  int64_t num_items = 0;    // interactions
};
absl::StatusOr<ValueLimits> ValueLimitsOf(const DataManifest& manifest, const std::string& dir);

// Where a run of values came from, for messages: entries [first, first + n)
// of dataset `dataset` in `path`.
struct ValueSource {
  const std::string& path;
  const char* dataset;
  int64_t first = 0;
};

// Each value in [0, limit); `limit_name` names the attribute ("vocab_size").
absl::Status CheckIdsBelow(const int32_t* values, int64_t n, int64_t limit, const char* limit_name,
                           const ValueSource& source);
absl::Status CheckIdsBelow(const int64_t* values, int64_t n, int64_t limit, const char* limit_name,
                           const ValueSource& source);
absl::Status CheckLossMask(const uint8_t* values, int64_t n, const ValueSource& source);
absl::Status CheckRatings(const float* values, int64_t n, const ValueSource& source);
// The events of user row `user` (all of them, or a suffix): non-decreasing.
absl::Status CheckTimestampsOrdered(const int64_t* values, int64_t n, int64_t user,
                                    const ValueSource& source);

// Reads every value dataset of the shard at `path` (already validated by
// ValidateShard, which gave `info`) in bounded chunks and applies the rules.
absl::Status VerifyShardValues(const std::string& path, const ShardInfo& info,
                               const ValueLimits& limits);

}  // namespace tessera
