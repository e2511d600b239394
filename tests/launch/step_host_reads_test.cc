// A training step on a device makes the host wait for nothing but the step
// before it, except at a log step (issue 12, docs/cuda.md "Host
// synchronisation inside a step"): the tiny Mamba-2 hybrid without its MoE
// layer, and the tiny DiT-MoE with a capacity factor (a dropless MoE layer
// reads its expert offsets by design, docs/cuda.md), train on the pretend
// device with log_every > 1, and every way the host waits on the device
// (copies to the host, event waits, synchronizes) is counted between the
// starts of consecutive steps.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/synthetic_images.h"
#include "models/registry.h"
#include "runtime/config/config.h"
#include "runtime/train/trainer.h"
#include "tests/launch/device_run_util.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

using HostWaits = PretendDeviceBackend::HostWaits;

// Forwards to the model's task and notes the device's counters as each
// step's first micro-batch starts.
class CountingTask : public TrainTask {
 public:
  CountingTask(TrainTask& task, const PretendDeviceBackend& device)
      : task_(task), device_(device) {}

  absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                 float loss_scale, double* loss) override {
    if (micro == 0) at_step_start_.emplace_back(step, device_.host_waits());
    return task_.RunMicroBatch(arena, step, micro, loss_scale, loss);
  }
  double TrainingFlopsPerSample() const override { return task_.TrainingFlopsPerSample(); }
  int64_t TokensPerSample() const override { return task_.TokensPerSample(); }
  size_t PredictActivationBytes() const override { return task_.PredictActivationBytes(); }
  size_t PredictStepArenaBytes() const override { return task_.PredictStepArenaBytes(); }
  std::string MetricsJsonFields() const override { return task_.MetricsJsonFields(); }
  std::string LogSuffix() const override { return task_.LogSuffix(); }
  void EndStep() override { task_.EndStep(); }

  std::vector<std::pair<int64_t, HostWaits>> at_step_start_;

 private:
  TrainTask& task_;
  const PretendDeviceBackend& device_;
};

// Trains `config` (7 steps, logging steps 1, 3, 6 and 7, two micro-batches
// of 4) on a pretend device and checks what the host waited for in each
// step: reads after a synchronize at log steps, and in the other steps no
// copy to the host, no synchronize and one event wait (the step boundary).
void ExpectNoReadsOutsideLogSteps(RunConfig config, const std::string& run_dir) {
  config.mutable_train()->set_run_dir(run_dir);
  config.mutable_train()->set_steps(7);
  config.mutable_train()->set_log_every(3);  // logs steps 1, 3, 6, 7
  config.mutable_train()->set_threads(1);
  config.mutable_train()->set_global_batch(8);
  config.mutable_train()->set_micro_batch(4);  // 2 micro-batches of the global 8
  config.mutable_optim()->set_ema_decay(0.9);  // the EMA's guard too
  config.mutable_optim()->set_grad_clip(0.05);  // and a clip scale below 1
  const absl::Status valid = ValidateRun(config, 1);
  ASSERT_TRUE(valid.ok()) << valid;

  PretendDeviceBackend device;
  const absl::StatusOr<const ModelFamily*> family = FindModelFamily(config);
  ASSERT_TRUE(family.ok()) << family.status();
  ParameterLayout layout;
  layout.backend = &device;
  absl::StatusOr<std::unique_ptr<Model>> model = (*family)->build(config, layout, nullptr);
  ASSERT_TRUE(model.ok()) << model.status();
  TaskOptions task_options;
  task_options.micro_batch = 4;
  absl::StatusOr<std::unique_ptr<TrainTask>> task = (*model)->CreateTask(task_options);
  ASSERT_TRUE(task.ok()) << task.status();
  CountingTask counting(**task, device);
  Trainer::Options options;
  options.micro_batches = 2;
  options.gemm_peak = 1;  // no peak measurement
  Trainer trainer(config, (*model)->store(), counting, options);
  const absl::Status status = trainer.Run();
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(counting.at_step_start_.size(), 7u);
  EXPECT_TRUE(std::isfinite(trainer.summary().last_loss));

  // Step s runs from the start of its first micro-batch to that of step
  // s + 1 (the last step's end holds the run's end: not measured).
  for (size_t i = 0; i + 1 < counting.at_step_start_.size(); ++i) {
    const int64_t step = counting.at_step_start_[i].first;
    const HostWaits& a = counting.at_step_start_[i].second;
    const HostWaits& b = counting.at_step_start_[i + 1].second;
    const int64_t copies = b.copies_to_host - a.copies_to_host;
    // The upload ring's waits for a region to reuse are no reads of the
    // step's results (a copy queued long before): not counted.
    const int64_t waits = (b.host_waits - b.staging_waits) - (a.host_waits - a.staging_waits);
    const int64_t synchronizes = b.synchronizes - a.synchronizes;
    ::testing::Test::RecordProperty("step_" + std::to_string(step) + "_host_reads",
                   std::to_string(copies) + " copies, " + std::to_string(waits) + " waits, " +
                       std::to_string(synchronizes) + " synchronizes");
    if (step == 1 || step == 3 || step == 6) {
      // A log step reads the loss and the norm (and the task its own
      // statistics) after a synchronize: the counters see the reads.
      EXPECT_GE(copies, 1) << "step " << step;
      EXPECT_EQ(synchronizes, 1) << "step " << step;
    } else {
      EXPECT_EQ(copies, 0) << "copies to the host in step " << step;
      EXPECT_EQ(synchronizes, 0) << "synchronizes in step " << step;
      // The step boundary: the host waits for the previous step's end only.
      EXPECT_EQ(waits, 1) << "host waits in step " << step;
    }
  }
}

TEST(StepHostReads, NoHostReadInsideATrainingStepExceptAtLogSteps) {
  const std::string base = ::testing::TempDir() + "/tessera_step_host_reads";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(testing::SynthesizeTinyLanguage(base + "/tokens").ok());

  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/mamba_hybrid_tiny.textproto");
  config.mutable_mamba_hybrid()->set_pattern("M*-M");  // no MoE layer: no routing reads
  config.mutable_mamba_hybrid()->set_num_layers(4);
  config.mutable_mamba_hybrid()->clear_moe();
  config.mutable_data()->set_dir(base + "/tokens");
  ExpectNoReadsOutsideLogSteps(config, base + "/run");
}

// DiT-MoE's MoE layers with a capacity factor read no routing on the host
// (fixed expert slots), and their balance losses, loads and drops stay on
// the device until a log line asks: its steps read nothing either.
TEST(StepHostReads, DitMoeWithACapacityReadsNothingOutsideLogSteps) {
  const std::string base = ::testing::TempDir() + "/tessera_step_host_reads_dit";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(SynthesizeImages(base + "/data", 64, 1, 8, 8, 10, 3, 64).ok());
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/dit_moe_tiny.textproto");
  config.mutable_data()->set_dir(base + "/data");
  config.mutable_dit_moe()->set_sample_grid_per_class(0);
  config.mutable_dit_moe()->mutable_moe()->set_capacity_factor(1.5f);
  ExpectNoReadsOutsideLogSteps(config, base + "/run");
}

}  // namespace
}  // namespace tessera
