#include "models/dit_moe/task.h"

#include "models/dit_moe/step_record.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::dit_moe {

absl::StatusOr<std::unique_ptr<DitMoeTask>> DitMoeTask::Create(const RunConfig& config,
                                                               DitMoe& model, int replica,
                                                               int num_replicas,
                                                               int64_t micro_batch,
                                                               SamplerState start) {
  ImageReaderOptions options;
  options.dir = config.data().dir();
  options.global_batch = config.train().global_batch();
  options.replica = replica;
  options.num_replicas = num_replicas;
  options.seed = config.train().seed();
  options.prefetch = config.data().prefetch();
  options.pad_to = static_cast<int>(model.dims().input_size);
  options.start = start;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<ImageReader> reader, ImageReader::Open(options));
  const DitMoeDims& dims = model.dims();
  if (reader->channels() != dims.channels || reader->height() != dims.input_size ||
      reader->width() != dims.input_size) {
    return UsageError(absl::StrFormat(
        "data.dir \"%s\" holds %dx%dx%d images (after padding), but model.dit_moe expects "
        "in_channels=%d, input_size=%d",
        options.dir, reader->channels(), reader->height(), reader->width(), dims.channels,
        dims.input_size));
  }
  if (reader->num_classes() > dims.num_classes) {
    return UsageError(absl::StrFormat(
        "data.dir \"%s\" has %d classes, but model.dit_moe.num_classes=%d", options.dir,
        reader->num_classes(), dims.num_classes));
  }
  return std::unique_ptr<DitMoeTask>(
      new DitMoeTask(config, model, std::move(reader), replica, num_replicas, micro_batch));
}

DitMoeTask::DitMoeTask(const RunConfig& config, DitMoe& model,
                       std::unique_ptr<ImageReader> reader, int replica, int num_replicas,
                       int64_t micro_batch)
    : config_(config),
      model_(model),
      diffusion_(config.dit_moe()),
      reader_(std::move(reader)),
      replica_(replica),
      num_replicas_(num_replicas),
      micro_batch_(micro_batch) {
  model_.ReserveScratch(micro_batch_);
}

absl::StatusOr<MicroBatchResult> DitMoeTask::RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                           float loss_scale, double* loss) {
  if (micro == 0) {
    model_.BeginStep();
    TESSERA_ASSIGN_OR_RETURN(batch_, reader_->Next());
    position_ = batch_.state_after;
    step_micro_batches_ = 0;
  }
  // Micro-batch m takes this replica's rows i with i % M == m, and replica r
  // holds global positions j = i * R + r: so the forward passes of any layout
  // see the same sample sets, residues of j modulo R * M (and the MoE balance
  // loss, computed per forward, agrees with one process's).
  const int64_t share = batch_.images.dim(0);
  const int64_t micro_batches = share / micro_batch_;
  TESSERA_CHECK(micro_batches * micro_batch_ == share && micro < micro_batches);
  // The clean images stay on the host: the noising draws are made there
  // (Diffusion::MakeExample), and only the noisy input and the target go to
  // a device. On the CPU the rows are gathered straight into the arena.
  const Shape image_shape{micro_batch_, batch_.images.dim(1), batch_.images.dim(2),
                          batch_.images.dim(3)};
  Tensor images;
  if (arena.backend().host_accessible()) {
    images = arena.AllocateUninitialized(DType::kF32, image_shape);
  } else {
    if (host_images_.shape() != image_shape) host_images_ = Tensor::Empty(DType::kF32, image_shape);
    images = host_images_;
  }
  const size_t image_bytes = images.bytes() / static_cast<size_t>(micro_batch_);
  std::vector<int32_t> labels(micro_batch_);
  std::vector<int64_t> positions(micro_batch_);
  Backend& backend = arena.backend();
  for (int64_t k = 0; k < micro_batch_; ++k) {
    const int64_t i = k * micro_batches + micro;
    std::memcpy(static_cast<char*>(images.raw()) + k * image_bytes,
                static_cast<const char*>(batch_.images.raw()) + i * image_bytes, image_bytes);
    labels[k] = batch_.labels.data<int32_t>()[i];
    positions[k] = i * num_replicas_ + replica_;
  }
  const DitMoeConfig& c = config_.dit_moe();
  DiffusionExample ex = diffusion_.MakeExample(
      arena, images, labels.data(), positions.data(), c.class_dropout_prob(),
      static_cast<int32_t>(model_.null_label()), config_.train().seed(), step,
      /*keep_noise=*/step_recorder() != nullptr);

  // The prediction and the target as this rank's output rows (all of them
  // on one process; a sequence shard under sp or Megatron SP).
  TESSERA_ASSIGN_OR_RETURN(Tensor prediction,
                           model_.ForwardRows(arena, ex.noisy, ex.t.data(), ex.labels.data()));
  const Tensor target = model_.LocalRows(arena, ex.target);
  if (step_recorder() != nullptr) {
    RecordDiffusionStep(*step_recorder(), model_, config_.train().global_batch(), images, labels,
                        positions, ex, prediction);
  }
  const int64_t n = prediction.numel();
  // Under Megatron SP this rank's loss is its share of the replica's. The
  // loss stays in device memory (the trainer reads it at log steps).
  const double loss_share = model_.loss_share();
  MicroBatchResult result;
  backend.MseForward(prediction.ptr<float>(), target.ptr<float>(), n, loss);
  TESSERA_RETURN_IF_ERROR(model_.SumDeviceLossOverTensorGroup(arena, loss));
  // The MoE layers' balance losses join loss[1] on the device; their
  // reports are kept there for the log step that reads them.
  result.aux_loss = model_.KeepReports(backend, micro, loss + 1);
  result.samples = micro_batch_;
  // The loss is a mean over samples (every sample has the same pixels): the
  // gradient is that of the per-sample sum (TrainTask::RunMicroBatch).
  result.elements = static_cast<double>(micro_batch_);
  const float element_scale = loss_scale * static_cast<float>(micro_batch_);
  Tensor dprediction = arena.AllocateUninitialized(DType::kF32, prediction.shape());
  backend.MseBackward(prediction.ptr<float>(), target.ptr<float>(), dprediction.ptr<float>(), n,
                      static_cast<float>(element_scale * loss_share));
  BeforeBackward();
  TESSERA_RETURN_IF_ERROR(model_.BackwardRows(arena, dprediction, element_scale));

  ++step_micro_batches_;
  return result;
}

void DitMoeTask::EndStep() {
  report_micro_batches_ = step_micro_batches_;
  report_read_ = false;
}

void DitMoeTask::ReadStepReport() const {
  if (report_read_) return;
  report_read_ = true;
  // Means over the last step's micro-batches (a log line's read).
  const std::vector<DitMoe::RoutingReport> reports = model_.ReadReports(report_micro_batches_);
  const double micro_batches = std::max(1, report_micro_batches_);
  balance_loss_ = 0;
  dropped_ = 0;
  expert_load_.clear();
  for (const DitMoe::RoutingReport& report : reports) {
    balance_loss_ += report.balance_loss;
    dropped_ += report.dropped;
    if (expert_load_.empty()) {
      expert_load_ = report.load;
    } else {
      for (size_t l = 0; l < report.load.size(); ++l)
        for (size_t e = 0; e < report.load[l].size(); ++e) expert_load_[l][e] += report.load[l][e];
    }
  }
  for (auto& layer : expert_load_)
    for (double& share : layer) share /= micro_batches;
  balance_loss_ /= micro_batches;
}

double DitMoeTask::TrainingFlopsPerSample() const {
  // Backward costs twice the forward (two GEMMs per forward GEMM).
  return 3.0 * model_.ForwardFlops(1);
}

size_t DitMoeTask::PredictActivationBytes() const {
  return model_.PlanActivations(micro_batch_).total();
}

size_t DitMoeTask::PredictStepArenaBytes() const {
  return model_.PlanActivations(micro_batch_).step_arena;
}

std::string DitMoeTask::MetricsJsonFields() const {
  ReadStepReport();
  std::string load = "[";
  double max_share = 0;
  for (size_t l = 0; l < expert_load_.size(); ++l) {
    absl::StrAppend(&load, l ? ",[" : "[");
    for (size_t e = 0; e < expert_load_[l].size(); ++e) {
      absl::StrAppend(&load, e ? "," : "", absl::StrFormat("%.4f", expert_load_[l][e]));
      max_share = std::max(max_share, expert_load_[l][e]);
    }
    absl::StrAppend(&load, "]");
  }
  absl::StrAppend(&load, "]");
  const double experts = static_cast<double>(model_.dims().num_experts);
  return absl::StrFormat(
      "\"balance_loss\":%.9g,\"expert_load_max\":%.6g,\"dropped_assignments\":%d,"
      "\"expert_load\":%s",
      balance_loss_, max_share * experts, dropped_, load);
}

std::string DitMoeTask::LogSuffix() const {
  ReadStepReport();
  double max_share = 0;
  for (const auto& layer : expert_load_)
    for (double share : layer) max_share = std::max(max_share, share);
  return absl::StrFormat(" | max expert load %.2fx", max_share * model_.dims().num_experts);
}

}  // namespace tessera::dit_moe
