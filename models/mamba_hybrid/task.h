// The Mamba hybrid's training task: windows of seq_len + 1 tokens from the
// tokens reader, next-token cross-entropy at the positions the data set's
// loss mask selects (all of them for plain text), averaged per target token.
#pragma once

#include <memory>

#include "data/token_reader.h"
#include "models/mamba_hybrid/model.h"
#include "runtime/train/train_task.h"

namespace tessera::mamba_hybrid {

class LanguageModelTask : public TrainTask {
 public:
  // `replica` of `num_replicas`; micro-batches of `micro_batch` windows.
  static absl::StatusOr<std::unique_ptr<LanguageModelTask>> Create(
      const RunConfig& config, MambaHybrid& model, int replica, int num_replicas,
      int64_t micro_batch, SamplerState start = {});

  absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                 float loss_scale, double* loss) override;
  double TrainingFlopsPerSample() const override;
  int64_t TokensPerSample() const override { return seq_len_; }
  size_t PredictActivationBytes() const override;
  std::string MetricsJsonFields() const override;
  std::string LogSuffix() const override;
  void EndStep() override;
  bool RecordsSteps() const override { return true; }
  std::pair<int64_t, int64_t> DataPosition() const override {
    return {position_.epoch, position_.position};
  }

 private:
  LanguageModelTask(MambaHybrid& model, std::unique_ptr<TokenReader> reader, int64_t seq_len,
                    int64_t micro_batch, int replica, int num_replicas, int64_t global_batch);
  // Rows i of this step's batch with i % micro_batches == micro, and their
  // positions in the global batch.
  LmInputs MicroBatchInputs(int micro, std::vector<int64_t>* positions) const;
  // Adds the E layers' assignments of the last forward to the step's.
  void CountExpertAssignments();

  MambaHybrid& model_;
  std::unique_ptr<TokenReader> reader_;
  int64_t seq_len_, micro_batch_;
  int replica_, num_replicas_;
  int64_t global_batch_;
  TokenBatch batch_;
  SamplerState position_;
  // This replica's loss sum over the step's micro-batches (one double in
  // device memory, read only for the log) and its targets.
  Tensor step_loss_sum_;
  double step_targets_ = 0;
  // The last step's bits per token on this replica (reads step_loss_sum_).
  double BitsPerToken() const;
  // Per E layer, assignments to each expert over the replica's tokens of
  // the step in progress, and of the last finished step.
  std::vector<std::vector<int64_t>> step_assignments_, assignments_;
};

}  // namespace tessera::mamba_hybrid
