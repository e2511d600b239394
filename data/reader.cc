#include "data/reader.h"

#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

absl::Status ValidateOptions(const ImageReaderOptions& options) {
  if (options.dir.empty()) return UsageError("data.dir is empty");
  if (options.num_replicas < 1) {
    return UsageError(absl::StrCat("number of data-parallel replicas must be positive, got ",
                                   options.num_replicas));
  }
  if (options.replica < 0 || options.replica >= options.num_replicas) {
    return UsageError(
        absl::StrCat("replica ", options.replica, " is outside [0, ", options.num_replicas, ")"));
  }
  if (options.global_batch <= 0 || options.global_batch % options.num_replicas != 0) {
    return UsageError(absl::StrCat("train.global_batch (", options.global_batch,
                                   ") must be a positive multiple of the number of data-parallel "
                                   "replicas (",
                                   options.num_replicas, ")"));
  }
  if (options.prefetch < 1) {
    return UsageError(absl::StrCat("data.prefetch must be at least 1, got ", options.prefetch));
  }
  if (options.pad_to < 0) {
    return UsageError(absl::StrCat("pad_to must be 0 or positive, got ", options.pad_to));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ImageReader>> ImageReader::Open(const ImageReaderOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateOptions(options));
  struct stat info;
  const std::string manifest_path = absl::StrCat(options.dir, "/", kManifestFile);
  if (::stat(manifest_path.c_str(), &info) != 0) {
    return DataError(absl::StrCat(
        "data.dir \"", options.dir, "\": no ", kManifestFile,
        " (run `tessera data import-fashion-mnist` or `tessera data synth --schema images` to make a "
        "data set, or point data.dir at one)"));
  }
  TESSERA_ASSIGN_OR_RETURN(DataManifest manifest, ReadManifest(options.dir));
  if (manifest.schema() != "images") {
    return DataError(absl::StrCat("data.dir \"", options.dir, "\": schema is \"", manifest.schema(),
                                  "\", the image reader needs \"images\""));
  }
  if (manifest.num_samples() == 0) {
    return DataError(absl::StrCat("data.dir \"", options.dir, "\": the data set has no samples"));
  }
  auto reader = std::unique_ptr<ImageReader>(new ImageReader(options, std::move(manifest)));
  if (options.pad_to > 0 && (options.pad_to < reader->height_ || options.pad_to < reader->width_)) {
    return UsageError(absl::StrCat("pad_to (", options.pad_to, ") is smaller than the images of ",
                                   options.dir, " (", reader->height_, "x", reader->width_, ")"));
  }
  if (absl::Status status = reader->sampler_.SetState(options.start); !status.ok()) {
    return UsageError(absl::StrCat("resuming ", options.dir, ": ", status.message()));
  }
  return reader;
}

ImageReader::ImageReader(const ImageReaderOptions& options, DataManifest manifest)
    : options_(options),
      sampler_(manifest.num_samples(), options.seed, options.shuffle),
      shards_(options.dir, manifest) {
  // ReadManifest checked these are positive integers.
  channels_ = static_cast<int>(*IntAttribute(manifest, "channels", options.dir));
  height_ = static_cast<int>(*IntAttribute(manifest, "height", options.dir));
  width_ = static_cast<int>(*IntAttribute(manifest, "width", options.dir));
  num_classes_ = static_cast<int>(*IntAttribute(manifest, "num_classes", options.dir));
  out_height_ = options.pad_to > 0 ? options.pad_to : height_;
  out_width_ = options.pad_to > 0 ? options.pad_to : width_;
  prefetcher_ = std::make_unique<Prefetcher<ImageBatch>>(
      options.prefetch, [this] { return ReadNextBatch(); }, [this] { shards_.CloseAll(); });
}

ImageReader::~ImageReader() { prefetcher_.reset(); }

absl::StatusOr<ImageBatch> ImageReader::Next() { return prefetcher_->Next(); }

absl::StatusOr<ImageBatch> ImageReader::ReadNextBatch() {
  ImageBatch batch;
  batch.indices = Sampler::ReplicaShare(sampler_.NextGlobalBatch(options_.global_batch),
                                        options_.replica, options_.num_replicas);
  batch.state_after = sampler_.state();
  const int64_t b = static_cast<int64_t>(batch.indices.size());
  const int64_t pixels_per_image = int64_t{channels_} * height_ * width_;

  pixels_.resize(static_cast<size_t>(b * pixels_per_image));
  batch.labels = Tensor::Empty(DType::kI32, Shape{b});  // [B]
  TESSERA_RETURN_IF_ERROR(
      shards_.ReadRows("images", DType::kU8, pixels_per_image, batch.indices, pixels_.data()));
  TESSERA_RETURN_IF_ERROR(
      shards_.ReadRows("labels", DType::kI32, 1, batch.indices, batch.labels.data<int32_t>()));
  const int32_t* labels = batch.labels.data<int32_t>();
  for (int64_t i = 0; i < b; ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes_) {
      return DataError(absl::StrCat(options_.dir, ": sample ", batch.indices[i], " has label ",
                                    labels[i], ", outside [0, ", num_classes_, ")"));
    }
  }

  // [B, C, H', W'], the image centered, the border -1.
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
  return batch;
}

}  // namespace tessera
