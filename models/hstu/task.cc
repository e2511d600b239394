#include "models/hstu/task.h"

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::hstu {

absl::StatusOr<std::unique_ptr<HstuTask>> HstuTask::Create(const RunConfig& config, Hstu& model,
                                                           int replica, int num_replicas,
                                                           int64_t micro_batch,
                                                           SamplerState start) {
  const HstuConfig& m = config.hstu();
  InteractionReaderOptions options;
  options.dir = config.data().dir();
  options.global_batch = config.train().global_batch();
  options.replica = replica;
  options.num_replicas = num_replicas;
  options.seed = config.train().seed();
  options.prefetch = config.data().prefetch();
  options.start = start;
  // max_len inputs + their next item, before the held-out events.
  options.max_len = static_cast<int64_t>(m.max_len()) + 1 + m.holdout();
  options.num_items = m.num_items();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<InteractionReader> reader,
                           InteractionReader::Open(options));
  return std::unique_ptr<HstuTask>(
      new HstuTask(config, model, std::move(reader), replica, num_replicas, micro_batch));
}

HstuTask::HstuTask(const RunConfig& config, Hstu& model,
                   std::unique_ptr<InteractionReader> reader, int replica, int num_replicas,
                   int64_t micro_batch)
    : config_(config),
      model_(model),
      loss_(model.dim(), config.hstu().temperature()),
      reader_(std::move(reader)),
      replica_(replica),
      num_replicas_(num_replicas),
      micro_batch_(micro_batch) {}

absl::StatusOr<MicroBatchResult> HstuTask::RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                         float loss_scale) {
  if (micro == 0) {
    TESSERA_ASSIGN_OR_RETURN(batch_, reader_->Next());
    position_ = batch_.state_after;
    step_tokens_ = 0;
  }
  const int64_t share = batch_.offsets.numel() - 1;
  TESSERA_CHECK(share % micro_batch_ == 0 && micro < share / micro_batch_);
  const HstuConfig& m = config_.hstu();
  const MicroBatchSlice slice{micro_batch_, micro, replica_, num_replicas_, m.holdout(),
                              model_.max_len()};
  const HstuBatch batch = TrainingMicroBatch(batch_, slice);
  const uint64_t seed = config_.train().seed();
  const DropoutDraw dropout{m.dropout(), seed, step};
  const Tensor outputs = model_.Forward(arena, batch, &dropout);
  const Candidates candidates =
      SampleCandidates(batch, m.num_negatives(), model_.num_items(), seed, step);
  ParameterStore& store = model_.store();
  MicroBatchResult result;
  result.loss = loss_.Forward(arena, outputs, store.param(model_.item_table()).ptr<float>(),
                              candidates);
  result.samples = micro_batch_;
  result.elements = static_cast<double>(batch.tokens());
  BeforeBackward();
  const Tensor doutputs =
      loss_.Backward(arena, store.grad(model_.item_table()).ptr<float>(), loss_scale);
  TESSERA_RETURN_IF_ERROR(model_.Backward(doutputs));
  step_tokens_ += batch.tokens();
  return result;
}

void HstuTask::EndStep() { tokens_ = step_tokens_; }

double HstuTask::TrainingFlopsPerSample() const {
  // A user of max_len positions; the loss's two GEMMs per candidate row.
  const HstuConfig& m = config_.hstu();
  const double loss = 2.0 * model_.max_len() * (1.0 + m.num_negatives()) * model_.dim();
  return 3.0 * (model_.ForwardFlops(model_.max_len()) + loss);
}

double ActivationBytesPerUser(const HstuConfig& m) {
  const double d = m.embedding_dim();
  const double fused = m.num_heads() * 2.0 * (m.attention_dim() + m.linear_dim());
  const double gated = m.num_heads() * static_cast<double>(m.linear_dim());
  // Per block: the norm and projection outputs, SiLU, attention, gate, mask,
  // output; the loss: candidate rows twice and their gradients twice.
  const double block = 3.0 * d + 2.0 * fused + 4.0 * gated;
  const double loss = 4.0 * (1.0 + m.num_negatives()) * d;
  return 4.0 * m.max_len() * (m.num_blocks() * block + loss + 4.0 * d);
}

size_t HstuTask::PredictActivationBytes() const {
  return static_cast<size_t>(micro_batch_ * ActivationBytesPerUser(config_.hstu()));
}

std::string HstuTask::MetricsJsonFields() const {
  return absl::StrFormat("\"supervised_positions\":%d", tokens_);
}

std::string HstuTask::LogSuffix() const {
  return absl::StrFormat(" | %d positions", tokens_);
}

}  // namespace tessera::hstu
