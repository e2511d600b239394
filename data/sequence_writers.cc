#include "data/sequence_writers.h"

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

absl::Status CheckPerShard(int64_t per_shard) {
  if (per_shard > 0) return absl::OkStatus();
  return UsageError(absl::StrCat("samples per shard must be positive, got ", per_shard));
}

}  // namespace

absl::StatusOr<TokensDatasetBuilder> TokensDatasetBuilder::Create(const std::string& dir,
                                                                  int64_t documents_per_shard,
                                                                  bool with_loss_mask) {
  TESSERA_RETURN_IF_ERROR(CheckPerShard(documents_per_shard));
  TESSERA_ASSIGN_OR_RETURN(DatasetWriter writer, DatasetWriter::Create(dir, "tokens"));
  return TokensDatasetBuilder(std::move(writer), documents_per_shard, with_loss_mask);
}

TokensDatasetBuilder::TokensDatasetBuilder(DatasetWriter writer, int64_t per_shard,
                                           bool with_loss_mask)
    : writer_(std::move(writer)), per_shard_(per_shard), with_loss_mask_(with_loss_mask) {}

absl::Status TokensDatasetBuilder::Add(const std::vector<int32_t>& tokens,
                                       const std::vector<uint8_t>& loss_mask) {
  if (with_loss_mask_ != !loss_mask.empty() && !tokens.empty()) {
    return UsageError("tokens data set: every document or none must come with a loss mask");
  }
  if (with_loss_mask_ && loss_mask.size() != tokens.size()) {
    return UsageError(absl::StrCat("tokens data set: document ", documents_, " has ", tokens.size(),
                                   " tokens but a loss mask of ", loss_mask.size()));
  }
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  loss_mask_.insert(loss_mask_.end(), loss_mask.begin(), loss_mask.end());
  offsets_.push_back(static_cast<int64_t>(tokens_.size()));
  ++documents_;
  if (static_cast<int64_t>(offsets_.size()) - 1 == per_shard_) return FlushShard();
  return absl::OkStatus();
}

absl::Status TokensDatasetBuilder::FlushShard() {
  const int64_t t = static_cast<int64_t>(tokens_.size());
  std::vector<DatasetData> datasets = {
      {"tokens", tokens_.data(), {t}},
      {"doc_offsets", offsets_.data(), {static_cast<int64_t>(offsets_.size())}}};
  if (with_loss_mask_) datasets.push_back({"loss_mask", loss_mask_.data(), {t}});
  TESSERA_RETURN_IF_ERROR(writer_.AddShard(datasets));
  tokens_.clear();
  loss_mask_.clear();
  offsets_ = {0};
  return absl::OkStatus();
}

absl::Status TokensDatasetBuilder::Finish(const std::map<std::string, std::string>& attributes,
                                          absl::string_view source) {
  if (offsets_.size() > 1) TESSERA_RETURN_IF_ERROR(FlushShard());
  return writer_.Finish(attributes, source);
}

absl::StatusOr<InteractionsDatasetBuilder> InteractionsDatasetBuilder::Create(
    const std::string& dir, int64_t users_per_shard, bool with_ratings) {
  TESSERA_RETURN_IF_ERROR(CheckPerShard(users_per_shard));
  TESSERA_ASSIGN_OR_RETURN(DatasetWriter writer, DatasetWriter::Create(dir, "interactions"));
  return InteractionsDatasetBuilder(std::move(writer), users_per_shard, with_ratings);
}

InteractionsDatasetBuilder::InteractionsDatasetBuilder(DatasetWriter writer, int64_t per_shard,
                                                       bool with_ratings)
    : writer_(std::move(writer)), per_shard_(per_shard), with_ratings_(with_ratings) {}

absl::Status InteractionsDatasetBuilder::Add(int64_t user_id, const std::vector<int64_t>& item_ids,
                                             const std::vector<int64_t>& timestamps,
                                             const std::vector<float>& ratings) {
  if (timestamps.size() != item_ids.size() ||
      (with_ratings_ && ratings.size() != item_ids.size()) ||
      (!with_ratings_ && !ratings.empty())) {
    return UsageError(absl::StrCat("interactions data set: user ", user_id, " has ",
                                   item_ids.size(), " items, ", timestamps.size(),
                                   " timestamps and ", ratings.size(), " ratings"));
  }
  user_ids_.push_back(user_id);
  item_ids_.insert(item_ids_.end(), item_ids.begin(), item_ids.end());
  timestamps_.insert(timestamps_.end(), timestamps.begin(), timestamps.end());
  ratings_.insert(ratings_.end(), ratings.begin(), ratings.end());
  offsets_.push_back(static_cast<int64_t>(item_ids_.size()));
  ++users_;
  if (static_cast<int64_t>(user_ids_.size()) == per_shard_) return FlushShard();
  return absl::OkStatus();
}

absl::Status InteractionsDatasetBuilder::FlushShard() {
  const int64_t u = static_cast<int64_t>(user_ids_.size());
  const int64_t e = static_cast<int64_t>(item_ids_.size());
  std::vector<DatasetData> datasets = {{"user_ids", user_ids_.data(), {u}},
                                       {"offsets", offsets_.data(), {u + 1}},
                                       {"item_ids", item_ids_.data(), {e}},
                                       {"timestamps", timestamps_.data(), {e}}};
  if (with_ratings_) datasets.push_back({"ratings", ratings_.data(), {e}});
  TESSERA_RETURN_IF_ERROR(writer_.AddShard(datasets));
  user_ids_.clear();
  item_ids_.clear();
  timestamps_.clear();
  ratings_.clear();
  offsets_ = {0};
  return absl::OkStatus();
}

absl::Status InteractionsDatasetBuilder::Finish(
    const std::map<std::string, std::string>& attributes, absl::string_view source) {
  if (!user_ids_.empty()) TESSERA_RETURN_IF_ERROR(FlushShard());
  return writer_.Finish(attributes, source);
}

}  // namespace tessera
