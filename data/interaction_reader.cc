#include "data/interaction_reader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "data/value_checks.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

constexpr int64_t kMaxHistory = int64_t{1} << 24;

absl::Status ValidateInteractionOptions(const InteractionReaderOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateReaderOptions(options));
  if (options.max_len < 0 || options.max_len > kMaxHistory) {
    return UsageError(
        absl::StrCat("max_len must be in [0, ", kMaxHistory, "], got ", options.max_len));
  }
  if (options.num_items < 0) {
    return UsageError(absl::StrCat("num_items must not be negative, got ", options.num_items));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<InteractionReader>> InteractionReader::Open(
    const InteractionReaderOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateInteractionOptions(options));
  TESSERA_ASSIGN_OR_RETURN(
      DataManifest manifest,
      ReadReaderManifest(options, "interactions",
                         "run `tessera data synth --schema interactions` to make a data set"));
  TESSERA_ASSIGN_OR_RETURN(int64_t items, IntAttribute(manifest, "num_items", options.dir));
  if (options.num_items != 0 && options.num_items < items) {
    return UsageError(absl::StrCat("the model's num_items (", options.num_items,
                                   ") is smaller than ", options.field, " \"", options.dir, "\"'s (", items,
                                   ")"));
  }
  auto reader =
      std::unique_ptr<InteractionReader>(new InteractionReader(options, std::move(manifest)));
  TESSERA_RETURN_IF_ERROR(reader->batches_.Resume(options.start, options.dir));
  return reader;
}

InteractionReader::InteractionReader(const InteractionReaderOptions& options, DataManifest manifest)
    : options_(options),
      shards_(options.dir, manifest),
      batches_(
          options, manifest.num_samples(),
          [this](const std::vector<int64_t>& indices) { return Read(indices); },
          [this] {
            shards_.CloseAll();
            offsets_.clear();
          }) {
  num_items_ = *IntAttribute(manifest, "num_items", options.dir);  // ReadManifest checked it
}

absl::StatusOr<bool> InteractionReader::HasRatings(int shard) {
  if (has_ratings_ < 0) {
    TESSERA_ASSIGN_OR_RETURN(const ShardInfo* first, shards_.Info(0));
    has_ratings_ = first->dims.count("ratings") > 0;
  }
  TESSERA_ASSIGN_OR_RETURN(const ShardInfo* info, shards_.Info(shard));
  if ((info->dims.count("ratings") > 0) != (has_ratings_ == 1)) {
    return DataError(absl::StrCat(shards_.ShardFile(shard), ": dataset \"ratings\" is ",
                                  has_ratings_ ? "missing" : "present", ", unlike in ",
                                  shards_.ShardFile(0), " (all shards or none have ratings)"));
  }
  return has_ratings_ == 1;
}

absl::StatusOr<std::pair<int64_t, int64_t>> InteractionReader::EventRange(int shard, int64_t user) {
  auto it = offsets_.find(shard);
  if (it == offsets_.end()) {
    TESSERA_ASSIGN_OR_RETURN(const ShardInfo* info, shards_.Info(shard));
    const int64_t rows = info->dims.at("offsets")[0];  // validated: starts at 0, monotone
    std::vector<int64_t> offsets(static_cast<size_t>(rows));
    TESSERA_RETURN_IF_ERROR(
        shards_.ReadRange(shard, "offsets", DType::kI64, 0, rows, offsets.data()));
    it = offsets_.emplace(shard, std::move(offsets)).first;
  }
  const int64_t begin = it->second[user], end = it->second[user + 1];
  const int64_t kept = options_.max_len > 0 ? std::min(end - begin, options_.max_len) : end - begin;
  return std::make_pair(end - kept, end);
}

absl::Status InteractionReader::ReadEvents(int shard, int64_t user,
                                           std::pair<int64_t, int64_t> range, int64_t at,
                                           InteractionBatch& batch) {
  const auto [first, end] = range;
  const int64_t count = end - first;
  const std::string path = shards_.ShardFile(shard);
  int64_t* items = batch.item_ids.data<int64_t>() + at;
  int64_t* times = batch.timestamps.data<int64_t>() + at;
  TESSERA_RETURN_IF_ERROR(shards_.ReadRange(shard, "item_ids", DType::kI64, first, count, items));
  TESSERA_RETURN_IF_ERROR(
      CheckIdsBelow(items, count, num_items_, "num_items", {path, "item_ids", first}));
  TESSERA_RETURN_IF_ERROR(shards_.ReadRange(shard, "timestamps", DType::kI64, first, count, times));
  TESSERA_RETURN_IF_ERROR(CheckTimestampsOrdered(times, count, user, {path, "timestamps", first}));
  if (!batch.ratings.defined()) return absl::OkStatus();
  float* ratings = batch.ratings.data<float>() + at;
  TESSERA_RETURN_IF_ERROR(shards_.ReadRange(shard, "ratings", DType::kF32, first, count, ratings));
  return CheckRatings(ratings, count, {path, "ratings", first});
}

absl::StatusOr<InteractionBatch> InteractionReader::Read(const std::vector<int64_t>& indices) {
  InteractionBatch batch;
  const int64_t b = static_cast<int64_t>(indices.size());
  batch.user_ids = Tensor::Empty(DType::kI64, Shape{b});     // [B]
  batch.offsets = Tensor::Empty(DType::kI64, Shape{b + 1});  // [B+1]
  TESSERA_RETURN_IF_ERROR(
      shards_.ReadRows("user_ids", DType::kI64, 1, indices, batch.user_ids.data<int64_t>()));
  std::vector<std::pair<int, int64_t>> rows;  // (shard, user row) of each sample
  std::vector<std::pair<int64_t, int64_t>> ranges;
  int64_t* offsets = batch.offsets.data<int64_t>();
  offsets[0] = 0;
  bool ratings = false;
  for (int64_t i = 0; i < b; ++i) {
    rows.push_back(shards_.Locate(indices[i]));
    TESSERA_ASSIGN_OR_RETURN(ratings, HasRatings(rows.back().first));
    TESSERA_ASSIGN_OR_RETURN(auto range, EventRange(rows.back().first, rows.back().second));
    ranges.push_back(range);
    offsets[i + 1] = offsets[i] + (range.second - range.first);
  }
  batch.num_events = offsets[b];
  batch.item_ids = Tensor::Empty(DType::kI64, Shape{batch.num_events});              // [E]
  batch.timestamps = Tensor::Empty(DType::kI64, Shape{batch.num_events});            // [E]
  if (ratings) batch.ratings = Tensor::Empty(DType::kF32, Shape{batch.num_events});  // [E]
  for (int64_t i = 0; i < b; ++i) {
    TESSERA_RETURN_IF_ERROR(
        ReadEvents(rows[i].first, rows[i].second, ranges[i], offsets[i], batch));
  }
  return batch;
}

}  // namespace tessera
