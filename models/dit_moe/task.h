// The DiT-MoE training task: image batches from the data reader, the
// diffusion objective, the model's forward and backward.
#pragma once

#include <memory>

#include "data/reader.h"
#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/model.h"
#include "runtime/train/train_task.h"

namespace tessera::dit_moe {

class DitMoeTask : public TrainTask {
 public:
  // `replica` of `num_replicas` data-parallel replicas; each step this
  // process trains on its share of train.global_batch in micro-batches of
  // `micro_batch` samples. `start`: where the data stream resumes.
  static absl::StatusOr<std::unique_ptr<DitMoeTask>> Create(const RunConfig& config,
                                                            DitMoe& model, int replica,
                                                            int num_replicas, int64_t micro_batch,
                                                            SamplerState start = {});

  absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                 float loss_scale, double* loss) override;
  double TrainingFlopsPerSample() const override;
  int64_t TokensPerSample() const override { return model_.dims().tokens(); }
  size_t PredictActivationBytes() const override;
  size_t PredictStepArenaBytes() const override;
  std::string MetricsJsonFields() const override;
  std::string LogSuffix() const override;
  void EndStep() override;
  bool RecordsSteps() const override { return true; }
  std::pair<int64_t, int64_t> DataPosition() const override {
    return {position_.epoch, position_.position};
  }

 private:
  DitMoeTask(const RunConfig& config, DitMoe& model, std::unique_ptr<ImageReader> reader,
             int replica, int num_replicas, int64_t micro_batch);

  const RunConfig& config_;
  DitMoe& model_;
  Diffusion diffusion_;
  std::unique_ptr<ImageReader> reader_;
  int replica_, num_replicas_;
  int64_t micro_batch_;
  ImageBatch batch_;  // this step's share of the global batch
  // A device run's micro-batch of clean images, gathered on the host (the
  // noising reads them there; they never go to the device).
  Tensor host_images_;
  SamplerState position_;  // after the last batch read
  int step_micro_batches_ = 0;
  // The last step's routing statistics, read from the model's kept reports
  // only when a log line asks (ReadStepReport): means over its micro-batches
  // of the balance loss and the load, and the assignments dropped.
  void ReadStepReport() const;
  int report_micro_batches_ = 0;
  mutable bool report_read_ = true;
  mutable double balance_loss_ = 0;
  mutable std::vector<std::vector<double>> expert_load_;
  mutable int64_t dropped_ = 0;
};

}  // namespace tessera::dit_moe
