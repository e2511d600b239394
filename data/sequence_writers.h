// Building tokens and interactions data sets one document or user at a time.
//
// Both keep only the current shard in memory and hand full shards to a
// DatasetWriter (data/dataset_writer.h), so a data set may be larger than
// memory. Finish() writes the last shard and the manifest.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/dataset_writer.h"

namespace tessera {

class TokensDatasetBuilder {
 public:
  // `with_loss_mask`: every document comes with a loss mask (see Add).
  static absl::StatusOr<TokensDatasetBuilder> Create(const std::string& dir,
                                                     int64_t documents_per_shard,
                                                     bool with_loss_mask);
  // One document; `loss_mask` (same length, entries 0 or 1) only and always
  // when the builder was created with_loss_mask.
  absl::Status Add(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& loss_mask = {});
  // `attributes` must include vocab_size and eod_token.
  absl::Status Finish(const std::map<std::string, std::string>& attributes,
                      absl::string_view source);
  int64_t num_documents() const { return documents_; }

 private:
  TokensDatasetBuilder(DatasetWriter writer, int64_t per_shard, bool with_loss_mask);
  absl::Status FlushShard();

  DatasetWriter writer_;
  int64_t per_shard_;
  bool with_loss_mask_;
  int64_t documents_ = 0;
  std::vector<int32_t> tokens_;     // this shard's
  std::vector<uint8_t> loss_mask_;  // this shard's
  std::vector<int64_t> offsets_ = {0};
};

class InteractionsDatasetBuilder {
 public:
  static absl::StatusOr<InteractionsDatasetBuilder> Create(const std::string& dir,
                                                           int64_t users_per_shard,
                                                           bool with_ratings);
  // One user's events, oldest first; `ratings` only and always with_ratings.
  absl::Status Add(int64_t user_id, const std::vector<int64_t>& item_ids,
                   const std::vector<int64_t>& timestamps, const std::vector<float>& ratings = {});
  // `attributes` must include num_items.
  absl::Status Finish(const std::map<std::string, std::string>& attributes,
                      absl::string_view source);
  int64_t num_users() const { return users_; }

 private:
  InteractionsDatasetBuilder(DatasetWriter writer, int64_t per_shard, bool with_ratings);
  absl::Status FlushShard();

  DatasetWriter writer_;
  int64_t per_shard_;
  bool with_ratings_;
  int64_t users_ = 0;
  std::vector<int64_t> user_ids_, item_ids_, timestamps_;  // this shard's
  std::vector<float> ratings_;
  std::vector<int64_t> offsets_ = {0};
};

}  // namespace tessera
