#include "models/mamba_hybrid/task.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/mamba_hybrid/step_record.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::mamba_hybrid {

absl::StatusOr<std::unique_ptr<LanguageModelTask>> LanguageModelTask::Create(
    const RunConfig& config, MambaHybrid& model, int replica, int num_replicas,
    int64_t micro_batch, SamplerState start) {
  TokenReaderOptions options;
  options.dir = config.data().dir();
  options.global_batch = config.train().global_batch();
  options.replica = replica;
  options.num_replicas = num_replicas;
  options.seed = config.train().seed();
  options.prefetch = config.data().prefetch();
  options.start = start;
  options.seq_len = config.mamba_hybrid().seq_len();
  options.vocab_size = config.mamba_hybrid().vocab_size();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<TokenReader> reader, TokenReader::Open(options));
  return std::unique_ptr<LanguageModelTask>(
      new LanguageModelTask(model, std::move(reader), options.seq_len, micro_batch, replica,
                            num_replicas, options.global_batch));
}

LanguageModelTask::LanguageModelTask(MambaHybrid& model, std::unique_ptr<TokenReader> reader,
                                     int64_t seq_len, int64_t micro_batch, int replica,
                                     int num_replicas, int64_t global_batch)
    : model_(model),
      reader_(std::move(reader)),
      seq_len_(seq_len),
      micro_batch_(micro_batch),
      replica_(replica),
      num_replicas_(num_replicas),
      global_batch_(global_batch) {}

LmInputs LanguageModelTask::MicroBatchInputs(int micro, std::vector<int64_t>* positions) const {
  const int64_t share = batch_.tokens.dim(0);
  const int64_t micro_batches = share / micro_batch_;
  LmInputs in;
  in.batch = micro_batch_;
  in.seq = seq_len_;
  const int32_t* tokens = batch_.tokens.data<int32_t>();
  const float* mask = batch_.loss_mask.data<float>();
  for (int64_t k = 0; k < micro_batch_; ++k) {
    const int64_t i = k * micro_batches + micro;
    positions->push_back(i * num_replicas_ + replica_);
    const int32_t* window = tokens + i * (seq_len_ + 1);
    for (int64_t t = 0; t < seq_len_; ++t) {
      in.inputs.push_back(window[t]);
      in.targets.push_back(window[t + 1]);
      in.mask.push_back(mask[i * seq_len_ + t] != 0 ? 1 : 0);
    }
  }
  return in;
}

absl::StatusOr<MicroBatchResult> LanguageModelTask::RunMicroBatch(Arena& arena, int64_t /*step*/,
                                                                  int micro, float loss_scale,
                                                                  double* loss_out) {
  if (micro == 0) {
    model_.BeginStep();
    TESSERA_ASSIGN_OR_RETURN(batch_, reader_->Next());
    position_ = batch_.state_after;
    if (!step_loss_sum_.defined()) {
      step_loss_sum_ = Tensor::Empty(DType::kI64, Shape{1}, arena.backend());
    }
    arena.backend().Memset(step_loss_sum_.address(), 0, sizeof(double));
    step_targets_ = 0;
    step_assignments_.clear();
  }
  const int64_t share = batch_.tokens.dim(0);
  TESSERA_CHECK(share % micro_batch_ == 0 && micro < share / micro_batch_);
  std::vector<int64_t> positions;
  const LmInputs in = MicroBatchInputs(micro, &positions);
  model_.keep_activations(step_recorder() != nullptr);
  TESSERA_ASSIGN_OR_RETURN(MambaHybrid::LossSum loss, model_.ForwardLossOnDevice(arena, in));
  if (step_recorder() != nullptr) {
    RecordLanguageModelStep(*step_recorder(), model_, arena, global_batch_, in, positions);
  }
  CountExpertAssignments();
  MicroBatchResult result;
  result.samples = micro_batch_;
  result.elements = static_cast<double>(loss.count);
  // The loss sum stays on the device: the trainer divides it by the count.
  Backend& backend = arena.backend();
  if (loss.totals.defined()) {
    backend.Copy(loss_out, loss.totals.address(), sizeof(double));
  } else {
    backend.Memset(loss_out, 0, sizeof(double));
  }
  backend.AccumulateScalars(loss_out, 1, 1.0,
                            reinterpret_cast<double*>(step_loss_sum_.ptr<int64_t>()));
  result.loss_divisor = loss.count > 0 ? static_cast<double>(loss.count) : 1.0;
  // Weighted by this shard's targets, the shards' sum is the micro-batch's
  // targets times the balance loss: the term Backward's gradient holds.
  result.aux_loss = loss.balance_loss;
  BeforeBackward();
  // The gradient of loss_scale * (the sum of the per-token losses).
  TESSERA_RETURN_IF_ERROR(model_.Backward(arena, loss_scale));
  step_targets_ += static_cast<double>(loss.count);
  return result;
}

void LanguageModelTask::CountExpertAssignments() {
  const std::vector<HybridMoe*>& layers = model_.moe_layers();
  step_assignments_.resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::vector<int64_t>& counts = layers[l]->assignment_counts();
    step_assignments_[l].resize(counts.size(), 0);
    for (size_t e = 0; e < counts.size(); ++e) step_assignments_[l][e] += counts[e];
  }
}

void LanguageModelTask::EndStep() {
  assignments_ = step_assignments_;
}

double LanguageModelTask::BitsPerToken() const {
  if (!(step_targets_ > 0)) return 0;
  double sum = 0;  // a log step's read
  step_loss_sum_.backend().CopyToHost(&sum, step_loss_sum_.address(), sizeof(double));
  return sum / step_targets_ / std::log(2.0);
}

double LanguageModelTask::TrainingFlopsPerSample() const {
  return 3.0 * model_.ForwardFlops(1, seq_len_);
}

size_t LanguageModelTask::PredictActivationBytes() const {
  return model_.PredictActivationBytes(micro_batch_, seq_len_);
}

namespace {

// The largest share of one layer's assignments any expert got, times the
// number of experts (1 = perfectly balanced), over the E layers.
double MaxExpertLoad(const std::vector<std::vector<int64_t>>& assignments) {
  double max_load = 0;
  for (const std::vector<int64_t>& layer : assignments) {
    int64_t total = 0, largest = 0;
    for (int64_t count : layer) {
      total += count;
      largest = std::max(largest, count);
    }
    if (total > 0) {
      max_load =
          std::max(max_load, static_cast<double>(largest) * static_cast<double>(layer.size()) /
                                 static_cast<double>(total));
    }
  }
  return max_load;
}

}  // namespace

std::string LanguageModelTask::MetricsJsonFields() const {
  // This replica's targets of the last step (the logged loss is over all replicas).
  std::string fields = absl::StrFormat("\"replica_bits_per_token\":%.6g,\"replica_targets\":%.0f",
                                       BitsPerToken(), step_targets_);
  if (assignments_.empty()) return fields;
  // This replica's assignments per E layer and expert, and their shares.
  std::string counts = "[", load = "[";
  for (size_t l = 0; l < assignments_.size(); ++l) {
    int64_t total = 0;
    for (int64_t count : assignments_[l]) total += count;
    absl::StrAppend(&counts, l ? ",[" : "[");
    absl::StrAppend(&load, l ? ",[" : "[");
    for (size_t e = 0; e < assignments_[l].size(); ++e) {
      const double share =
          total > 0 ? static_cast<double>(assignments_[l][e]) / static_cast<double>(total) : 0;
      absl::StrAppend(&counts, e ? "," : "", assignments_[l][e]);
      absl::StrAppend(&load, e ? "," : "", absl::StrFormat("%.4f", share));
    }
    absl::StrAppend(&counts, "]");
    absl::StrAppend(&load, "]");
  }
  absl::StrAppend(&fields, ",\"expert_assignments\":", counts, "],\"expert_load\":", load,
                  "],\"expert_load_max\":", absl::StrFormat("%.6g", MaxExpertLoad(assignments_)));
  return fields;
}

std::string LanguageModelTask::LogSuffix() const {
  std::string suffix = absl::StrFormat(" | %.3f bits/token (this replica)", BitsPerToken());
  if (!assignments_.empty()) {
    absl::StrAppend(&suffix,
                    absl::StrFormat(" | max expert load %.2fx", MaxExpertLoad(assignments_)));
  }
  return suffix;
}

}  // namespace tessera::mamba_hybrid
