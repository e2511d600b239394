// The HSTU training task: users' histories from the interactions reader,
// the last `holdout` events of each held out, every remaining position
// trained to predict the next item with the sampled softmax loss. The loss
// is the mean over supervised positions (MicroBatchResult::elements), so it
// is exact under any layout.
#pragma once

#include <memory>

#include "data/interaction_reader.h"
#include "models/hstu/model.h"
#include "models/hstu/sampled_softmax.h"
#include "parallel/embedding/row_sharded_table.h"
#include "runtime/train/train_task.h"

namespace tessera::hstu {

class HstuTask : public TrainTask {
 public:
  // `replica` of `num_replicas`; micro-batches of `micro_batch` users.
  // `table`: the item table (this rank's rows); every micro-batch looks up
  // its input items and loss candidates in it (a collective over its group).
  static absl::StatusOr<std::unique_ptr<HstuTask>> Create(const RunConfig& config, Hstu& model,
                                                          parallel::RowShardedTable& table,
                                                          int replica, int num_replicas,
                                                          int64_t micro_batch,
                                                          SamplerState start = {});

  absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                 float loss_scale, double* loss) override;
  double TrainingFlopsPerSample() const override;
  int64_t TokensPerSample() const override { return model_.max_len(); }
  size_t PredictActivationBytes() const override;
  std::string MetricsJsonFields() const override;
  std::string LogSuffix() const override;
  void EndStep() override;
  std::pair<int64_t, int64_t> DataPosition() const override {
    return {position_.epoch, position_.position};
  }

 private:
  HstuTask(const RunConfig& config, Hstu& model, parallel::RowShardedTable& table,
           std::unique_ptr<InteractionReader> reader, int replica, int num_replicas,
           int64_t micro_batch);

  const RunConfig& config_;
  Hstu& model_;
  parallel::RowShardedTable& table_;
  SampledSoftmax loss_;
  std::unique_ptr<InteractionReader> reader_;
  int replica_, num_replicas_;
  int64_t micro_batch_;
  InteractionBatch batch_;  // this step's share of the global batch
  SamplerState position_;
  int64_t step_tokens_ = 0, tokens_ = 0;  // supervised positions (this rank)
  // Where this rank's step went (seconds, over its micro-batches): reading
  // and slicing the batch and sampling negatives; the item table's lookups
  // and gradient hand-back (its sparse update is the trainer's
  // sparse_step_seconds); the HSTU layers forward and backward; the sampled
  // softmax forward and backward. step_phases_ accumulates, phases_ is the
  // last step's (metrics.jsonl).
  struct Phases {
    double data = 0, table = 0, layers = 0, loss = 0;
  };
  Phases step_phases_, phases_;
};

// Activation bytes one training user of max_len positions keeps, from the
// config alone (the memory plan).
double ActivationBytesPerUser(const HstuConfig& config);

}  // namespace tessera::hstu
