#include "data/reader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "data/value_checks.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

absl::StatusOr<std::unique_ptr<ImageReader>> ImageReader::Open(const ImageReaderOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateReaderOptions(options));
  if (options.pad_to < 0) {
    return UsageError(absl::StrCat("pad_to must be 0 or positive, got ", options.pad_to));
  }
  TESSERA_ASSIGN_OR_RETURN(
      DataManifest manifest,
      ReadReaderManifest(options, "images",
                         "run `tessera data import-fashion-mnist` or `tessera data synth "
                         "--schema images` to make a data set"));
  auto reader = std::unique_ptr<ImageReader>(new ImageReader(options, std::move(manifest)));
  if (options.pad_to > 0 && (options.pad_to < reader->height_ || options.pad_to < reader->width_)) {
    return UsageError(absl::StrCat(options.field, " \"", options.dir, "\": its images (",
                                   reader->height_, "x", reader->width_,
                                   ") are larger than pad_to (", options.pad_to, ")"));
  }
  TESSERA_RETURN_IF_ERROR(reader->batches_.Resume(options.start, options.dir));
  return reader;
}

ImageReader::ImageReader(const ImageReaderOptions& options, DataManifest manifest)
    : options_(options),
      shards_(options.dir, manifest),
      batches_(
          options, manifest.num_samples(),
          [this](const std::vector<int64_t>& indices) { return Read(indices); },
          [this] { shards_.CloseAll(); }) {
  // ReadManifest checked these are positive integers.
  channels_ = static_cast<int>(*IntAttribute(manifest, "channels", options.dir));
  height_ = static_cast<int>(*IntAttribute(manifest, "height", options.dir));
  width_ = static_cast<int>(*IntAttribute(manifest, "width", options.dir));
  num_classes_ = static_cast<int>(*IntAttribute(manifest, "num_classes", options.dir));
  out_height_ = options.pad_to > 0 ? options.pad_to : height_;
  out_width_ = options.pad_to > 0 ? options.pad_to : width_;
}

absl::StatusOr<ImageBatch> ImageReader::Read(const std::vector<int64_t>& indices) {
  ImageBatch batch;
  const int64_t b = static_cast<int64_t>(indices.size());
  const int64_t pixels_per_image = int64_t{channels_} * height_ * width_;
  pixels_.resize(static_cast<size_t>(b * pixels_per_image));
  batch.labels = Tensor::Empty(DType::kI32, Shape{b});  // [B]
  TESSERA_RETURN_IF_ERROR(
      shards_.ReadRows("images", DType::kU8, pixels_per_image, indices, pixels_.data()));
  TESSERA_RETURN_IF_ERROR(
      shards_.ReadRows("labels", DType::kI32, 1, indices, batch.labels.data<int32_t>()));
  const int32_t* labels = batch.labels.data<int32_t>();
  for (int64_t i = 0; i < b; ++i) {
    const auto [shard, row] = shards_.Locate(indices[i]);
    TESSERA_RETURN_IF_ERROR(CheckIdsBelow(labels + i, 1, num_classes_, "num_classes",
                                          {shards_.ShardFile(shard), "labels", row}));
  }
  ToFloat(batch);
  return batch;
}

// pixels_ -> batch.images [B, C, H', W'], the image centered, the border -1.
void ImageReader::ToFloat(ImageBatch& batch) const {
  const int64_t b = batch.labels.dim(0);
  batch.images = Tensor::Empty(DType::kF32, Shape{b, channels_, out_height_, out_width_});
  float* out = batch.images.data<float>();
  const int top = (out_height_ - height_) / 2, left = (out_width_ - width_) / 2;
  const bool padded = out_height_ != height_ || out_width_ != width_;
  if (padded) std::fill(out, out + batch.images.numel(), -1.0f);
  const uint8_t* in = pixels_.data();
  for (int64_t plane = 0; plane < b * channels_; ++plane) {
    float* out_plane = out + plane * out_height_ * out_width_;
    for (int y = 0; y < height_; ++y) {
      float* out_row = out_plane + (y + top) * out_width_ + left;
      for (int x = 0; x < width_; ++x) out_row[x] = static_cast<float>(*in++) / 127.5f - 1.0f;
    }
  }
}

}  // namespace tessera
