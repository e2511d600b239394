#include "models/dit_moe/evaluation.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "models/common/eval_reader.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::dit_moe {
namespace {

// The held-out split must hold images of the training data's shape (before
// the padding both get) and no class the model lacks.
absl::Status CheckAgainstTraining(const RunConfig& config, const DitMoe& model,
                                  const ImageReaderOptions& options, const ImageReader& reader) {
  const std::string& train_dir = config.data().dir();
  TESSERA_ASSIGN_OR_RETURN(const DataManifest train, ReadManifest(train_dir));
  const DataManifest& eval = reader.manifest();
  int64_t shape[2][3];
  const char* keys[3] = {"channels", "height", "width"};
  for (int k = 0; k < 3; ++k) {
    TESSERA_ASSIGN_OR_RETURN(shape[0][k], IntAttribute(train, keys[k], train_dir));
    TESSERA_ASSIGN_OR_RETURN(shape[1][k], IntAttribute(eval, keys[k], options.dir));
  }
  if (!std::equal(shape[0], shape[0] + 3, shape[1])) {
    return UsageError(absl::StrFormat(
        "data.eval_dir \"%s\": %s/%s holds %dx%dx%d images (channels x height x width), but "
        "data.dir \"%s\" holds %dx%dx%d: the held-out split must have the training images' shape",
        options.dir, options.dir, kManifestFile, shape[1][0], shape[1][1], shape[1][2], train_dir,
        shape[0][0], shape[0][1], shape[0][2]));
  }
  if (reader.num_classes() > model.dims().num_classes) {
    return UsageError(absl::StrFormat(
        "data.eval_dir \"%s\": %s/%s has num_classes %d, but model.dit_moe.num_classes=%d",
        options.dir, options.dir, kManifestFile, reader.num_classes(), model.dims().num_classes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DitMoeEvaluation>> DitMoeEvaluation::Create(
    const RunConfig& config, DitMoe& model, const TaskOptions& task) {
  ImageReaderOptions options;
  SetEvalReaderOptions(config, task, &options);
  options.pad_to = static_cast<int>(model.dims().input_size);
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<ImageReader> reader, ImageReader::Open(options));
  TESSERA_RETURN_IF_ERROR(CheckAgainstTraining(config, model, options, *reader));
  return std::unique_ptr<DitMoeEvaluation>(
      new DitMoeEvaluation(config, model, options, std::move(reader)));
}

DitMoeEvaluation::DitMoeEvaluation(const RunConfig& config, DitMoe& model,
                                   const ImageReaderOptions& options,
                                   std::unique_ptr<ImageReader> reader)
    : model_(model), diffusion_(config.dit_moe()), options_(options), reader_(std::move(reader)) {
  const int64_t available = reader_->num_samples();
  const int64_t wanted = config.train().eval_samples();
  samples_ = wanted > 0 ? std::min(wanted, available) : available;
}

absl::StatusOr<std::vector<EvalMetric>> DitMoeEvaluation::Evaluate(Arena& arena) {
  // Each evaluation reads the split from its start with a fresh reader.
  if (!reader_) {
    TESSERA_ASSIGN_OR_RETURN(reader_, ImageReader::Open(options_));
  }
  const int64_t global = options_.global_batch;
  const int64_t batches = (samples_ + global - 1) / global;
  double sum = 0, count = 0;
  for (int64_t b = 0; b < batches; ++b) {
    TESSERA_ASSIGN_OR_RETURN(const ImageBatch batch, reader_->Next());
    TESSERA_ASSIGN_OR_RETURN(const double part, BatchLossSum(arena, batch, b * global, &count));
    sum += part;
    arena.Reset();
  }
  reader_.reset();  // stops its I/O thread between evaluations
  return std::vector<EvalMetric>{{"val_loss", sum, count}};
}

absl::StatusOr<double> DitMoeEvaluation::BatchLossSum(Arena& arena, const ImageBatch& batch,
                                                      int64_t first, double* count) {
  const int64_t m = batch.images.dim(0);
  std::vector<int64_t> positions(m);
  int64_t valid = 0;  // the valid positions come first (they increase with k)
  for (int64_t k = 0; k < m; ++k) {
    positions[k] = first + k * options_.num_replicas + options_.replica;
    if (positions[k] < samples_) ++valid;
  }
  Backend& backend = arena.backend();
  // The clean images are read on the host, where the batch is.
  const DiffusionExample ex = diffusion_.MakeExample(
      arena, batch.images, batch.labels.data<int32_t>(), positions.data(), /*class_dropout=*/0.0f,
      static_cast<int32_t>(model_.null_label()), kSeed, kStep);
  TESSERA_ASSIGN_OR_RETURN(const Tensor prediction,
                           model_.ForwardRows(arena, ex.noisy, ex.t.data(), ex.labels.data(),
                                              /*record=*/false));
  const Tensor target = model_.LocalRows(arena, ex.target);
  double loss = 0;
  if (valid > 0) {
    // Output rows are sample-major: the valid images' rows come first.
    const int64_t n = prediction.numel() / m * valid;
    // Evaluation reads its loss (it is no training step).
    const Tensor mse = arena.AllocateUninitialized(DType::kI64, Shape{1});
    backend.MseForward(prediction.ptr<float>(), target.ptr<float>(), n,
                       reinterpret_cast<double*>(mse.ptr<int64_t>()));
    double mean = 0;
    backend.CopyToHost(&mean, mse.address(), sizeof(double));
    loss = model_.loss_share() * static_cast<double>(valid) * mean;
  }
  // Under Megatron SP each tp rank holds its share of the images' tokens.
  TESSERA_RETURN_IF_ERROR(model_.SumLossOverTensorGroup(&loss));
  *count += static_cast<double>(valid);
  return loss;
}

}  // namespace tessera::dit_moe
