#include "models/hstu/batch.h"

#include <algorithm>

namespace tessera::hstu {
namespace {

// Tokens from events [first, first + count) of the spans.
void AppendTokens(std::span<const int64_t> items, std::span<const int64_t> timestamps,
                  size_t first, size_t count, int64_t max_len, uint64_t sample,
                  HstuBatch& batch) {
  for (size_t i = 0; i < count; ++i) {
    batch.items.push_back(static_cast<int32_t>(items[first + i]));
    batch.positions.push_back(static_cast<int32_t>(i));
    batch.timestamps.push_back(timestamps[first + i]);
    batch.token_keys.push_back(sample * static_cast<uint64_t>(max_len) + i);
  }
  batch.offsets.push_back(batch.offsets.back() + static_cast<int64_t>(count));
}

}  // namespace

void AppendTrainingUser(std::span<const int64_t> items, std::span<const int64_t> timestamps,
                        int64_t max_len, uint64_t sample, HstuBatch& batch) {
  const size_t events = std::min(items.size(), static_cast<size_t>(max_len) + 1);
  const size_t first = items.size() - events;
  const size_t count = events < 2 ? 0 : events - 1;
  AppendTokens(items, timestamps, first, count, max_len, sample, batch);
  for (size_t i = 0; i < count; ++i) {
    batch.targets.push_back(static_cast<int32_t>(items[first + i + 1]));
  }
  batch.next_timestamps.push_back(count > 0 ? timestamps[first + count] : 0);
}

void AppendHistoryUser(std::span<const int64_t> items, std::span<const int64_t> timestamps,
                       int64_t next_timestamp, int64_t max_len, uint64_t sample,
                       HstuBatch& batch) {
  const size_t count = std::min(items.size(), static_cast<size_t>(max_len));
  AppendTokens(items, timestamps, items.size() - count, count, max_len, sample, batch);
  batch.next_timestamps.push_back(next_timestamp);
}

HstuBatch TrainingMicroBatch(const InteractionBatch& share, const MicroBatchSlice& slice) {
  const int64_t users = share.offsets.numel() - 1;
  const int64_t micro_batches = users / slice.micro_batch;
  const int64_t* offsets = share.offsets.data<int64_t>();
  const int64_t* items = share.item_ids.data<int64_t>();
  const int64_t* times = share.timestamps.data<int64_t>();
  HstuBatch batch;
  for (int64_t k = 0; k < slice.micro_batch; ++k) {
    const int64_t i = k * micro_batches + slice.micro;
    const int64_t begin = offsets[i];
    const int64_t kept = std::max<int64_t>(0, offsets[i + 1] - begin - slice.holdout);
    AppendTrainingUser(std::span<const int64_t>(items + begin, kept),
                       std::span<const int64_t>(times + begin, kept), slice.max_len,
                       static_cast<uint64_t>(i * slice.num_replicas + slice.replica), batch);
  }
  return batch;
}

}  // namespace tessera::hstu
