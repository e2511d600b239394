// The image reader: this replica's share of each global batch, as tensors.
//
// A BatchReader (data/batch_reader.h) for the `images` schema: a Sampler
// chooses global indices, a ShardSet reads their rows, and both run on one
// I/O thread that keeps up to `prefetch` batches ready. All HDF5 work of a
// reader happens on that thread (which starts on the first Next()), under the
// process-wide H5Lock.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/batch_reader.h"
#include "data/manifest.h"
#include "data/shard_set.h"
#include "runtime/tensor/tensor.h"

namespace tessera {

struct ImageReaderOptions : ReaderOptions {
  int pad_to = 0;  // pad H and W (centered) to this size with -1; 0 = no padding
};

struct ImageBatch {
  Tensor images;                 // f32 [B, C, H', W'], pixel/127.5 - 1 (so [-1, 1]); padding = -1
  Tensor labels;                 // i32 [B]
  std::vector<int64_t> indices;  // global sample indices
  SamplerState state_after;      // sampler state once this batch is consumed
};

class ImageReader : public BatchReader<ImageBatch> {
 public:
  // Validates the options and the manifest (not the shards: each is opened
  // and validated by the I/O thread when first read). Errors name the folder
  // or the option (as its config field: data.dir, train.global_batch, …).
  static absl::StatusOr<std::unique_ptr<ImageReader>> Open(const ImageReaderOptions& options);

  absl::StatusOr<ImageBatch> Next() override { return batches_.Next(); }
  int64_t num_samples() const override { return shards_.num_samples(); }
  const DataManifest& manifest() const override { return shards_.manifest(); }

  int channels() const { return channels_; }
  int height() const { return out_height_; }  // after padding
  int width() const { return out_width_; }    // after padding
  int num_classes() const { return num_classes_; }

 private:
  ImageReader(const ImageReaderOptions& options, DataManifest manifest);
  // Runs on the I/O thread.
  absl::StatusOr<ImageBatch> Read(const std::vector<int64_t>& indices);
  void ToFloat(ImageBatch& batch) const;

  ImageReaderOptions options_;
  int channels_ = 0, height_ = 0, width_ = 0, num_classes_ = 0;
  int out_height_ = 0, out_width_ = 0;
  // Owned by the I/O thread once it has started.
  ShardSet shards_;
  std::vector<uint8_t> pixels_;  // [B, C, H, W] as stored
  // Last, so its thread is joined first.
  SampledBatches<ImageBatch> batches_;
};

}  // namespace tessera
