// The image reader: this replica's share of each global batch, as tensors.
//
// Built from the generic pieces: a Sampler chooses global indices, a ShardSet
// reads their rows, and a Prefetcher runs both on one I/O thread that keeps up
// to `prefetch` batches ready. All HDF5 work of a reader happens on that
// thread (which starts on the first Next()), under the process-wide H5Lock.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/manifest.h"
#include "data/prefetcher.h"
#include "data/sampler.h"
#include "data/shard_set.h"
#include "runtime/tensor/tensor.h"

namespace tessera {

struct ImageReaderOptions {
  std::string dir;           // folder with manifest.textproto
  int64_t global_batch = 0;  // samples per optimizer step over all replicas
  int replica = 0, num_replicas = 1;
  uint64_t seed = 0;
  int prefetch = 4;
  int pad_to = 0;       // pad H and W (centered) to this size with -1; 0 = no padding
  SamplerState start;   // resume point
  bool shuffle = true;  // false: every epoch in index order (evaluation)
};

struct ImageBatch {
  Tensor images;                 // f32 [B, C, H', W'], pixel/127.5 - 1 (so [-1, 1]); padding = -1
  Tensor labels;                 // i32 [B]
  std::vector<int64_t> indices;  // global sample indices
  SamplerState state_after;      // sampler state once this batch is consumed
};

class ImageReader {
 public:
  // Validates the options and the manifest (not the shards: each is opened
  // and validated by the I/O thread when first read). Errors name the folder
  // or the option (as its config field: data.dir, train.global_batch, …).
  static absl::StatusOr<std::unique_ptr<ImageReader>> Open(const ImageReaderOptions& options);

  ~ImageReader();

  // This replica's share of the next global batch: B = global_batch /
  // num_replicas samples. After an error every later call fails the same way.
  absl::StatusOr<ImageBatch> Next();

  int64_t num_samples() const { return shards_.num_samples(); }
  int channels() const { return channels_; }
  int height() const { return out_height_; }  // after padding
  int width() const { return out_width_; }    // after padding
  int num_classes() const { return num_classes_; }
  const DataManifest& manifest() const { return shards_.manifest(); }

 private:
  ImageReader(const ImageReaderOptions& options, DataManifest manifest);
  // Runs on the I/O thread.
  absl::StatusOr<ImageBatch> ReadNextBatch();

  ImageReaderOptions options_;
  int channels_ = 0, height_ = 0, width_ = 0, num_classes_ = 0;
  int out_height_ = 0, out_width_ = 0;
  // Owned by the I/O thread once it has started.
  Sampler sampler_;
  ShardSet shards_;
  std::vector<uint8_t> pixels_;  // [B, C, H, W] as stored
  // Last, so it is destroyed (and its thread joined) first.
  std::unique_ptr<Prefetcher<ImageBatch>> prefetcher_;
};

}  // namespace tessera
