#include "models/hstu/task.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::hstu {

absl::StatusOr<std::unique_ptr<HstuTask>> HstuTask::Create(const RunConfig& config, Hstu& model,
                                                           parallel::RowShardedTable& table,
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
  return std::unique_ptr<HstuTask>(new HstuTask(config, model, table, std::move(reader), replica,
                                                num_replicas, micro_batch));
}

HstuTask::HstuTask(const RunConfig& config, Hstu& model, parallel::RowShardedTable& table,
                   std::unique_ptr<InteractionReader> reader, int replica, int num_replicas,
                   int64_t micro_batch)
    : config_(config),
      model_(model),
      table_(table),
      loss_(model.dim(), config.hstu().temperature()),
      reader_(std::move(reader)),
      replica_(replica),
      num_replicas_(num_replicas),
      micro_batch_(micro_batch) {}

absl::StatusOr<MicroBatchResult> HstuTask::RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                         float loss_scale, double* loss) {
  using Clock = std::chrono::steady_clock;
  auto mark = Clock::now();
  // Adds the time since the last mark to `phase`.
  const auto lap = [&mark](double& phase) {
    const auto now = Clock::now();
    phase += std::chrono::duration<double>(now - mark).count();
    mark = now;
  };
  if (micro == 0) {
    TESSERA_ASSIGN_OR_RETURN(batch_, reader_->Next());
    position_ = batch_.state_after;
    step_tokens_ = 0;
    step_phases_ = Phases();
  }
  const int64_t share = batch_.offsets.numel() - 1;
  TESSERA_CHECK(share % micro_batch_ == 0 && micro < share / micro_batch_);
  const HstuConfig& m = config_.hstu();
  const MicroBatchSlice slice{micro_batch_, micro, replica_, num_replicas_, m.holdout(),
                              model_.max_len()};
  const HstuBatch batch = TrainingMicroBatch(batch_, slice);
  const uint64_t seed = config_.train().seed();
  // Under sp this rank's tokens only (all of them otherwise).
  const parallel::TokenRange mine = model_.Tokens(batch);
  const Candidates candidates =
      SampleCandidates(batch, mine, m.num_negatives(), model_.num_items(), seed, step);
  // One lookup for the input items and the loss's candidates (T: this
  // rank's tokens): each distinct item's row once, [U, D], in the arena's
  // memory, and where each of the T + T (1 + K) positions finds its row, the
  // inputs' first. A device-resident table gathers the rows on the device;
  // a host table copies only the distinct rows over (and their gradient
  // back). The model and the loss gather from them.
  const int64_t tokens = mine.size(), dim = model_.dim();
  std::vector<int64_t> ids(batch.items.begin() + mine.begin, batch.items.begin() + mine.end);
  ids.insert(ids.end(), candidates.ids.begin(), candidates.ids.end());
  std::vector<int32_t> host_slots;
  lap(step_phases_.data);
  Tensor distinct;
  TESSERA_RETURN_IF_ERROR(table_.LookupDistinctOn(arena, ids, &distinct, &host_slots));
  Backend& backend = arena.backend();
  Tensor slots = arena.AllocateUninitialized(DType::kI32, Shape{static_cast<int64_t>(ids.size())});
  backend.CopyToDevice(slots.address(), host_slots.data(), slots.bytes());
  const Tensor input_slots = slots.Slice(0, tokens), candidate_slots = slots.Slice(tokens, slots.dim(0));
  Tensor inputs = arena.AllocateUninitialized(DType::kF32, Shape{tokens, dim});
  backend.EmbeddingForward(input_slots.ptr<int32_t>(), distinct.ptr<float>(), inputs.ptr<float>(),
                           tokens, dim);
  lap(step_phases_.table);
  const DropoutDraw dropout{m.dropout(), seed, step};
  TESSERA_ASSIGN_OR_RETURN(const Tensor outputs,
                           model_.Forward(arena, batch, inputs.ptr<float>(), &dropout));
  lap(step_phases_.layers);
  MicroBatchResult result;
  loss_.Forward(arena, outputs, distinct, candidate_slots, candidates, loss);
  result.samples = micro_batch_;
  result.elements = static_cast<double>(tokens);
  BeforeBackward();
  Tensor ddistinct = arena.Allocate(DType::kF32, distinct.shape());  // zeros
  const Tensor doutputs = loss_.Backward(arena, ddistinct, loss_scale);
  lap(step_phases_.loss);
  Tensor dinputs = arena.AllocateUninitialized(DType::kF32, Shape{tokens, dim});
  TESSERA_RETURN_IF_ERROR(model_.Backward(doutputs, dinputs.ptr<float>()));
  backend.EmbeddingBackward(input_slots.ptr<int32_t>(), dinputs.ptr<float>(),
                            ddistinct.ptr<float>(), tokens, dim);
  lap(step_phases_.layers);
  // The tp ranks of a replica hold the same rows' gradients: one of them
  // sends them (the others send zeros for the same rows, which the owners'
  // sums leave unchanged and which touch the same rows). sp ranks hold
  // different tokens' rows: each sends its own.
  if (model_.tp().rank() != 0) backend.Memset(ddistinct.address(), 0, ddistinct.bytes());
  // The owners accumulate the rows' gradients; the trainer's Step updates them.
  TESSERA_RETURN_IF_ERROR(table_.BackwardDistinctOn(arena, ddistinct));
  lap(step_phases_.table);
  step_tokens_ += tokens;
  return result;
}

void HstuTask::EndStep() {
  tokens_ = step_tokens_;
  phases_ = step_phases_;
}

double HstuTask::TrainingFlopsPerSample() const {
  // A user of max_len positions; the loss's two GEMMs per candidate row.
  const HstuConfig& m = config_.hstu();
  // The loss runs on this sp rank's share of the tokens.
  const double loss = 2.0 * model_.max_len() * (1.0 + m.num_negatives()) * model_.dim() /
                      model_.sp().size();
  return 3.0 * (model_.ForwardFlops(model_.max_len()) + loss);
}

double ActivationBytesPerUser(const HstuConfig& m) {
  const double d = m.embedding_dim();
  const double fused = m.num_heads() * 2.0 * (m.attention_dim() + m.linear_dim());
  const double gated = m.num_heads() * static_cast<double>(m.linear_dim());
  // Per block: the norm and projection outputs, SiLU, attention, gate, mask,
  // output; the loss: the normalised candidate rows and their gradient; the
  // inputs' rows and their gradient; the distinct rows looked up (at most
  // one per position, at most the table) five times: the rows, normalised,
  // their gradient before and after the norm, and its sum.
  const double block = 3.0 * d + 2.0 * fused + 4.0 * gated;
  const double positions = m.max_len() * (2.0 + m.num_negatives());
  const double distinct = std::min(positions, static_cast<double>(m.num_items()));
  const double loss = 2.0 * (1.0 + m.num_negatives()) * d * m.max_len() + 2.0 * d * m.max_len() +
                      5.0 * distinct * d;
  return 4.0 * (m.max_len() * (m.num_blocks() * block + 4.0 * d) + loss);
}

size_t HstuTask::PredictActivationBytes() const {
  return static_cast<size_t>(micro_batch_ * ActivationBytesPerUser(config_.hstu()));
}

std::string HstuTask::MetricsJsonFields() const {
  return absl::StrFormat(
      "\"supervised_positions\":%d,\"data_seconds\":%.6g,\"table_seconds\":%.6g,"
      "\"layers_seconds\":%.6g,\"loss_seconds\":%.6g",
      tokens_, phases_.data, phases_.table, phases_.layers, phases_.loss);
}

std::string HstuTask::LogSuffix() const {
  return absl::StrFormat(" | %d positions", tokens_);
}

}  // namespace tessera::hstu
