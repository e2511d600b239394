// The step loop on a toy task: gradient accumulation equals one big batch,
// non-finite losses stop training with the numerical exit code, every
// logged step writes one metrics.jsonl line with the documented fields, the
// samples count once per replica of the data (not per rank sharing them),
// the ETA after a resume predicts the time the run then takes, and the
// evaluation hook runs on the inference weights when due.
#include "runtime/train/trainer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <thread>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/nn/linear.h"

namespace tessera {
namespace {

// Linear regression onto a fixed random target map; sample s of the run is
// a function of s alone, so any micro-batching sees the same data.
class RegressionTask : public TrainTask {
 public:
  RegressionTask(ParameterStore& store, int64_t micro_batch)
      : linear_(store, "linear", kIn, kOut), micro_batch_(micro_batch) {}
  // Micro-batch m holds sizes[m] samples (unequal counts), starting at
  // sample `first` of each step's global batch.
  RegressionTask(ParameterStore& store, std::vector<int64_t> sizes, int64_t first = 0)
      : linear_(store, "linear", kIn, kOut), sizes_(std::move(sizes)), first_(first) {}

  absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                 float loss_scale, double* loss) override {
    if (on_micro_batch_) on_micro_batch_(step, micro);
    int64_t count = micro_batch_, start = first_ + micro * micro_batch_;
    if (!sizes_.empty()) {
      count = sizes_[micro];
      start = first_;
      for (int m = 0; m < micro; ++m) start += sizes_[m];
    }
    Tensor x = arena.Allocate(DType::kF32, Shape{count, kIn});
    Tensor target = arena.Allocate(DType::kF32, Shape{count, kOut});
    for (int64_t i = 0; i < count; ++i) {
      Rng rng(static_cast<uint64_t>((step - 1) * kGlobalBatch + start + i));
      for (int64_t j = 0; j < kIn; ++j) x.data<float>()[i * kIn + j] = rng.Normal();
      for (int64_t j = 0; j < kOut; ++j) {
        float sum = 0;
        for (int64_t k = 0; k < kIn; ++k) sum += 0.3f * static_cast<float>((j + k) % 3 - 1) * x.data<float>()[i * kIn + k];
        target.data<float>()[i * kOut + j] = sum;
      }
    }
    Tensor y = linear_.Forward(arena, x);
    MicroBatchResult result;
    *loss = cpu::MseForward(y.data<float>(), target.data<float>(), y.numel());  // host memory
    if (poison_at_step_ == step) *loss = std::numeric_limits<double>::quiet_NaN();
    result.samples = count;
    result.elements = static_cast<double>(count);  // a mean over samples
    Tensor dy = arena.AllocateUninitialized(DType::kF32, y.shape());
    cpu::MseBackward(y.data<float>(), target.data<float>(), dy.data<float>(), y.numel(),
                     loss_scale * static_cast<float>(count));
    if (poison_gradient_at_step_ == step) dy.data<float>()[0] = std::numeric_limits<float>::infinity();
    linear_.Backward(arena, dy, false);
    return result;
  }
  double TrainingFlopsPerSample() const override { return 3 * linear_.ForwardFlops(1); }
  int64_t TokensPerSample() const override { return 1; }
  size_t PredictActivationBytes() const override { return 0; }
  std::string MetricsJsonFields() const override { return "\"toy\":1"; }

  static constexpr int64_t kIn = 6, kOut = 3, kGlobalBatch = 8;
  int64_t poison_at_step_ = -1;           // a NaN loss (finite gradients)
  int64_t poison_gradient_at_step_ = -1;  // an Inf in the output's gradient
  std::function<void(int64_t step, int micro)> on_micro_batch_;

 private:
  Linear linear_;
  int64_t micro_batch_ = 0;
  std::vector<int64_t> sizes_;
  int64_t first_ = 0;
};

RunConfig ToyConfig(const std::string& run_dir) {
  RunConfig config;
  config.mutable_train()->set_run_dir(run_dir);
  config.mutable_train()->set_steps(6);
  config.mutable_train()->set_log_every(2);
  config.mutable_train()->set_progress("off");
  config.mutable_train()->set_global_batch(RegressionTask::kGlobalBatch);
  config.mutable_optim()->set_lr(0.05);
  config.mutable_optim()->set_ema_decay(0.5);
  return config;
}

Trainer::Options MicroBatches(int n) {
  Trainer::Options options;
  options.micro_batches = n;
  return options;
}

std::string TempRunDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/tessera_trainer_" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

std::vector<float> TrainAndReturnWeights(int64_t micro_batch, const std::string& name) {
  RunConfig config = ToyConfig(TempRunDir(name));
  ParameterStore store;
  RegressionTask task(store, micro_batch);
  store.Finalize(3);
  Trainer trainer(config, store, task,
                  MicroBatches(static_cast<int>(RegressionTask::kGlobalBatch / micro_batch)));
  EXPECT_TRUE(trainer.Run().ok());
  return std::vector<float>(store.values().data<float>(),
                            store.values().data<float>() + store.numel());
}

TEST(Trainer, GradientAccumulationEqualsOneLargeBatch) {
  const std::vector<float> whole = TrainAndReturnWeights(8, "whole");
  const std::vector<float> accumulated = TrainAndReturnWeights(2, "accumulated");
  ASSERT_EQ(whole.size(), accumulated.size());
  for (size_t i = 0; i < whole.size(); ++i)
    EXPECT_NEAR(whole[i], accumulated[i], 1e-5 * (1 + std::fabs(whole[i]))) << i;
}

// Micro-batches of 1, 4 and 3 samples: each weighs by its count, so the
// step is the mean over the 8 samples, as one micro-batch of 8 computes it.
TEST(Trainer, UnequalMicroBatchCountsGiveTheMeanOverTheGlobalBatchsElements) {
  auto train = [](std::vector<int64_t> sizes, const std::string& name) {
    RunConfig config = ToyConfig(TempRunDir(name));
    ParameterStore store;
    RegressionTask task(store, sizes);
    store.Finalize(3);
    Trainer trainer(config, store, task, MicroBatches(static_cast<int>(sizes.size())));
    EXPECT_TRUE(trainer.Run().ok());
    return std::make_pair(std::vector<float>(store.values().data<float>(),
                                             store.values().data<float>() + store.numel()),
                          trainer.summary().last_loss);
  };
  const auto [whole, whole_loss] = train({8}, "unequal_whole");
  const auto [split, split_loss] = train({1, 4, 3}, "unequal_split");
  EXPECT_NEAR(split_loss, whole_loss, 1e-6 * std::fabs(whole_loss));
  ASSERT_EQ(whole.size(), split.size());
  for (size_t i = 0; i < whole.size(); ++i)
    EXPECT_NEAR(whole[i], split[i], 1e-6 * (std::fabs(whole[i]) + 1e-3)) << i;
}

// The weights and EMA after `steps` steps of the toy run (or after a run
// that failed), and the run's status.
struct ToyRun {
  absl::Status status;
  std::vector<float> weights, ema;
};
ToyRun RunToy(const std::string& name, int64_t steps, int64_t poison_loss,
              int64_t poison_gradient, int64_t checkpoint_every = 0) {
  RunConfig config = ToyConfig(TempRunDir(name));
  config.mutable_train()->set_steps(steps);
  config.mutable_checkpoint()->set_every(checkpoint_every);
  ParameterStore store;
  RegressionTask task(store, 8);
  task.poison_at_step_ = poison_loss;
  task.poison_gradient_at_step_ = poison_gradient;
  store.Finalize(3);
  Trainer trainer(config, store, task, MicroBatches(1));
  ToyRun run;
  run.status = trainer.Run();
  run.weights.assign(store.values().data<float>(), store.values().data<float>() + store.numel());
  run.ema.assign(trainer.inference_weights(), trainer.inference_weights() + store.numel());
  return run;
}

// Step 3's loss is NaN (its gradients finite) and step 3 logs nothing
// (log_every 2): the device guard skips its update, and the run stops at
// step 4's read naming step 3, its weights and EMA those of step 2.
TEST(Trainer, NanLossStopsWithTheNumericalExitCode) {
  const ToyRun two_steps = RunToy("nan_reference", 2, -1, -1);
  ASSERT_TRUE(two_steps.status.ok()) << two_steps.status;
  const ToyRun run = RunToy("nan", 6, /*poison_loss=*/3, -1);
  ASSERT_FALSE(run.status.ok());
  EXPECT_EQ(ExitCodeFor(run.status), 6);
  EXPECT_NE(run.status.message().find("NaN or Inf at step 3 (found at step 4)"),
            std::string::npos) << run.status;
  EXPECT_NE(run.status.message().find("training diverged"), std::string::npos) << run.status;
  EXPECT_EQ(run.weights, two_steps.weights) << "a diverged step changed the weights";
  EXPECT_EQ(run.ema, two_steps.ema) << "a diverged step changed the EMA";
}

// An Inf in step 4's gradient (a log step): found at once, by name.
TEST(Trainer, NonFiniteGradientNormSkipsTheUpdateAndStopsAtTheRead) {
  const ToyRun three_steps = RunToy("inf_reference", 3, -1, -1);
  ASSERT_TRUE(three_steps.status.ok()) << three_steps.status;
  const ToyRun run = RunToy("inf_gradient", 6, -1, /*poison_gradient=*/4);
  ASSERT_FALSE(run.status.ok());
  EXPECT_EQ(ExitCodeFor(run.status), 6);
  EXPECT_EQ(run.status.message().rfind("gradient norm is ", 0), 0u) << run.status;
  EXPECT_NE(run.status.message().find(" at step 4: training diverged"), std::string::npos)
      << run.status;
  EXPECT_EQ(run.weights, three_steps.weights);
  EXPECT_EQ(run.ema, three_steps.ema);
}

// A save reads the guard first: no checkpoint of a diverged step is written.
TEST(Trainer, NoCheckpointHoldsTheWeightsOfADivergedStep) {
  const ToyRun run = RunToy("nan_checkpoint", 6, /*poison_loss=*/3, -1, /*checkpoint_every=*/1);
  ASSERT_FALSE(run.status.ok());
  EXPECT_EQ(ExitCodeFor(run.status), 6);
  EXPECT_NE(run.status.message().find("loss is NaN at step 3"), std::string::npos) << run.status;
  const std::string checkpoints = ::testing::TempDir() + "/tessera_trainer_nan_checkpoint/checkpoints";
  EXPECT_TRUE(IsCommittedCheckpoint(checkpoints + "/step_00000002"));
  EXPECT_FALSE(std::filesystem::exists(checkpoints + "/step_00000003"));
}

TEST(Trainer, WritesOneMetricsLinePerLoggedStepWithTheDocumentedFields) {
  const std::string dir = TempRunDir("metrics");
  RunConfig config = ToyConfig(dir);
  ParameterStore store;
  RegressionTask task(store, 4);
  store.Finalize(3);
  Trainer trainer(config, store, task, MicroBatches(2));
  ASSERT_TRUE(trainer.Run().ok());
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 4u);  // steps 1, 2, 4, 6
  for (const char* field : {"\"step\":", "\"loss\":", "\"lr\":", "\"grad_norm\":",
                            "\"samples_per_s\":", "\"tokens_per_s\":", "\"flops_per_s\":",
                            "\"peak_fraction\":", "\"rss_bytes\":", "\"toy\":1"}) {
    for (const std::string& line : lines) EXPECT_NE(line.find(field), std::string::npos) << line;
  }
  EXPECT_EQ(lines[2].rfind("{\"step\":4,", 0), 0u) << lines[2];
  EXPECT_LT(trainer.summary().last_loss, trainer.summary().first_loss);
}

TEST(Trainer, EmaFollowsTheWeights) {
  RunConfig config = ToyConfig(TempRunDir("ema"));
  ParameterStore store;
  RegressionTask task(store, 8);
  store.Finalize(3);
  std::vector<float> initial(store.values().data<float>(),
                             store.values().data<float>() + store.numel());
  Trainer trainer(config, store, task, MicroBatches(1));
  ASSERT_TRUE(trainer.Run().ok());
  // With decay 0.5 the EMA lies strictly between the start and the end for a
  // weight that moved monotonically; at least it differs from both.
  const float* ema = trainer.inference_weights();
  int differs = 0;
  for (int64_t i = 0; i < store.numel(); ++i)
    differs += ema[i] != store.values().data<float>()[i] && ema[i] != initial[i];
  EXPECT_GT(differs, 0);
}

// An evaluation that records the parameters it was called with and returns
// their sum over 2 (and a metric with no samples).
class ProbeEval : public EvalTask {
 public:
  explicit ProbeEval(ParameterStore& store) : store_(store) {}
  absl::StatusOr<std::vector<EvalMetric>> Evaluate(Arena&) override {
    const float* values = store_.values().data<float>();
    seen_.assign(values, values + store_.numel());
    double sum = 0;
    for (float v : seen_) sum += v;
    return std::vector<EvalMetric>{{"probe", sum, 2.0}, {"empty", 0.0, 0.0}};
  }
  int64_t num_samples() const override { return 7; }
  std::vector<float> seen_;

 private:
  ParameterStore& store_;
};

TEST(Trainer, EvaluatesTheInferenceWeightsEveryEvalEveryStepsAndAfterTheLast) {
  const std::string dir = TempRunDir("eval");
  RunConfig config = ToyConfig(dir);  // 6 steps, EMA decay 0.5, log every 2
  config.mutable_train()->set_eval_every(4);
  ParameterStore store;
  RegressionTask task(store, 8);
  store.Finalize(3);
  ProbeEval eval(store);
  Trainer::Options options = MicroBatches(1);
  options.eval = &eval;
  Trainer trainer(config, store, task, options);
  ASSERT_TRUE(trainer.Run().ok());
  // The last evaluation saw the EMA, and the trained weights came back.
  const float* ema = trainer.inference_weights();
  const float* values = store.values().data<float>();
  ASSERT_EQ(eval.seen_.size(), static_cast<size_t>(store.numel()));
  int differs = 0;
  double ema_sum = 0;
  for (int64_t i = 0; i < store.numel(); ++i) {
    EXPECT_EQ(eval.seen_[i], ema[i]) << i;
    differs += values[i] != ema[i];
    ema_sum += ema[i];
  }
  EXPECT_GT(differs, 0);
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<std::string> records;
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"eval_samples\"") != std::string::npos) records.push_back(line);
  }
  ASSERT_EQ(records.size(), 2u);  // after steps 4 and 6
  EXPECT_EQ(records[0].rfind("{\"step\":4,\"eval_samples\":7,\"eval_seconds\":", 0), 0u)
      << records[0];
  EXPECT_EQ(records[1].rfind("{\"step\":6,\"eval_samples\":7,", 0), 0u) << records[1];
  const size_t at = records[1].find("\"probe\":");
  ASSERT_NE(at, std::string::npos) << records[1];
  EXPECT_NEAR(std::stod(records[1].substr(at + 8)), ema_sum / 2, 1e-6 * std::abs(ema_sum) + 1e-9);
  EXPECT_NE(records[1].find("\"empty\":null}"), std::string::npos) << records[1];
}

// What sequence parallelism looks like to the step loop: the gradients are
// averaged over sp ranks that all trained on the same samples (sp = 2, dp = 1).
class SequenceParallelPairSync : public LocalGradientSync {
 public:
  using LocalGradientSync::LocalGradientSync;
  int num_replicas() const override { return 2; }
};

TEST(Trainer, SamplesPerStepAreTheGlobalBatchWhateverRanksShareThem) {
  RunConfig config = ToyConfig(TempRunDir("sp_samples"));
  ParameterStore store;
  RegressionTask task(store, 8);
  store.Finalize(3);
  SequenceParallelPairSync sync(store, config.optim());
  Trainer::Options options = MicroBatches(1);
  options.sync = &sync;
  Trainer trainer(config, store, task, options);
  ASSERT_TRUE(trainer.Run().ok());
  // The same as one process (dp only) on the same 8 samples per step.
  EXPECT_EQ(trainer.summary().steps, 6);
  EXPECT_EQ(trainer.summary().samples, 6 * RegressionTask::kGlobalBatch);
}

// A run resumed at step 20 of 30 whose steps take ~40 ms: after step 25 the
// ETA (from the steps this process ran, 22-25) must predict the time steps
// 26-30 then take, within 20 %. Dividing by the absolute step (25) instead
// gave a fifth of it.
TEST(Trainer, EtaAfterAResumeMatchesTheRemainingTime) {
  const std::string dir = TempRunDir("eta_resume");
  {
    RunConfig config = ToyConfig(dir);
    config.mutable_train()->set_steps(20);
    config.mutable_checkpoint()->set_every(20);
    ParameterStore store;
    RegressionTask task(store, 8);
    store.Finalize(3);
    Trainer trainer(config, store, task, MicroBatches(1));
    ASSERT_TRUE(trainer.Run().ok());
  }
  RunConfig config = ToyConfig(dir);
  config.mutable_train()->set_steps(30);
  ParameterStore store;
  RegressionTask task(store, 8);
  store.Finalize(3);
  Trainer::Options options = MicroBatches(1);
  options.resume_dir = CheckpointsRoot(dir) + "/" + CheckpointDirName(20);
  Trainer trainer(config, store, task, options);
  using Clock = std::chrono::steady_clock;
  double eta = -1;
  Clock::time_point probe;
  task.on_micro_batch_ = [&](int64_t step, int) {
    if (step == 26) {
      eta = trainer.eta_seconds();
      probe = Clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
  };
  ASSERT_TRUE(trainer.Run().ok());
  const double remaining = std::chrono::duration<double>(Clock::now() - probe).count();
  EXPECT_EQ(trainer.summary().steps, 10);
  EXPECT_NEAR(eta, remaining, 0.2 * remaining) << "ETA " << eta << " s, took " << remaining << " s";
}

// An evaluation whose metric "score" follows a script: call i returns
// script[first + i] (as a sum over 2 samples), next to another metric.
class ScriptedEval : public EvalTask {
 public:
  ScriptedEval(std::vector<double> script, size_t first = 0)
      : script_(std::move(script)), next_(first) {}
  absl::StatusOr<std::vector<EvalMetric>> Evaluate(Arena&) override {
    const double value = script_.at(next_++);
    return std::vector<EvalMetric>{{"other", 1.0, 1.0}, {"score", 2 * value, 2.0}};
  }
  int64_t num_samples() const override { return 2; }

 private:
  std::vector<double> script_;
  size_t next_;
};

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

RunConfig EarlyStopConfig(const std::string& dir, const std::string& mode, int64_t steps) {
  RunConfig config = ToyConfig(dir);
  config.mutable_train()->set_steps(steps);
  config.mutable_train()->set_eval_every(1);
  config.mutable_train()->set_early_stop_patience(2);
  config.mutable_train()->set_early_stop_metric("score");
  config.mutable_train()->set_early_stop_mode(mode);
  return config;
}

// score after steps 1, 2, ...: the best is step 2's; steps 3 and 4 do not
// beat it (an equal value is no improvement), so the run stops after step 4.
const std::vector<double> kScript = {0.1, 0.3, 0.2, 0.3, 0.9, 0.9, 0.9, 0.9};

std::vector<double> Signed(double sign) {
  std::vector<double> values = kScript;
  for (double& v : values) v *= sign;
  return values;
}

TEST(Trainer, EarlyStopAfterPatienceEvaluationsWithoutImprovementSavesAndRecordsTheBest) {
  for (const std::string mode : {"max", "min"}) {
    const std::string dir = TempRunDir("early_stop_" + mode);
    const RunConfig config = EarlyStopConfig(dir, mode, 8);
    ParameterStore store;
    RegressionTask task(store, 8);
    store.Finalize(3);
    ScriptedEval eval(Signed(mode == "max" ? 1 : -1));  // lower is better for "min"
    Trainer::Options options = MicroBatches(1);
    options.eval = &eval;
    Trainer trainer(config, store, task, options);
    ASSERT_TRUE(trainer.Run().ok()) << mode;
    EXPECT_EQ(trainer.summary().steps, 4) << mode;
    EXPECT_TRUE(IsCommittedCheckpoint(CheckpointsRoot(dir) + "/" + CheckpointDirName(4))) << mode;
    EXPECT_EQ(ReadWhole(dir + "/early_stop.json"),
              "{\"stopped_after_step\":4,\"metric\":\"score\",\"mode\":\"" + mode +
                  "\",\"patience\":2,\"best_step\":2,\"best\":" +
                  (mode == "max" ? "0.3" : "-0.3") + ",\"restored\":\"" + CheckpointsRoot(dir) +
                  "/" + CheckpointDirName(2) + "\"}\n");
    const std::string metrics = ReadWhole(dir + "/metrics.jsonl");
    EXPECT_EQ(metrics.find("{\"step\":5"), std::string::npos) << metrics;
  }
}

TEST(Trainer, EarlyStopCountsTheEvaluationsBeforeAResume) {
  const std::string dir = TempRunDir("early_stop_resume");
  {
    RunConfig config = EarlyStopConfig(dir, "max", 3);  // evaluations 0.1, 0.3 (best), 0.2
    config.mutable_checkpoint()->set_every(3);
    ParameterStore store;
    RegressionTask task(store, 8);
    store.Finalize(3);
    ScriptedEval eval(kScript);
    Trainer::Options options = MicroBatches(1);
    options.eval = &eval;
    Trainer trainer(config, store, task, options);
    ASSERT_TRUE(trainer.Run().ok());
    EXPECT_EQ(trainer.summary().steps, 3);
    EXPECT_FALSE(std::filesystem::exists(dir + "/early_stop.json"));
  }
  // Resumed after step 3: step 4's 0.3 is the second evaluation without an
  // improvement on step 2's, which the resumed run knows from metrics.jsonl
  // (a count started afresh would take 0.3 as its best and go on to step 8).
  const RunConfig config = EarlyStopConfig(dir, "max", 8);
  ParameterStore store;
  RegressionTask task(store, 8);
  store.Finalize(3);
  ScriptedEval eval(kScript, 3);
  Trainer::Options options = MicroBatches(1);
  options.eval = &eval;
  options.resume_dir = CheckpointsRoot(dir) + "/" + CheckpointDirName(3);
  Trainer trainer(config, store, task, options);
  ASSERT_TRUE(trainer.Run().ok());
  EXPECT_EQ(trainer.summary().steps, 1);
  EXPECT_NE(ReadWhole(dir + "/early_stop.json").find("\"stopped_after_step\":4,"), std::string::npos);
  EXPECT_NE(ReadWhole(dir + "/early_stop.json").find("\"best_step\":2,\"best\":0.3,\"restored\":"),
            std::string::npos);
}

// The weights (and EMA) a run of `steps` steps ends on, without evaluation.
std::pair<std::vector<float>, std::vector<float>> WeightsAfter(int64_t steps,
                                                              const std::string& name) {
  RunConfig config = ToyConfig(TempRunDir(name));
  config.mutable_train()->set_steps(steps);
  ParameterStore store;
  RegressionTask task(store, 8);
  store.Finalize(3);
  Trainer trainer(config, store, task, MicroBatches(1));
  EXPECT_TRUE(trainer.Run().ok());
  const float* values = store.values().ptr<float>();
  return {std::vector<float>(values, values + store.numel()),
          std::vector<float>(trainer.inference_weights(),
                             trainer.inference_weights() + store.numel())};
}

TEST(Trainer, EarlyStopEndsOnTheBestStepsWeightsWhichPruningKeeps) {
  const auto best = WeightsAfter(2, "early_stop_best_reference");
  const auto last = WeightsAfter(4, "early_stop_last_reference");
  ASSERT_NE(best.first, last.first);
  for (const bool restore : {true, false}) {
    const std::string dir = TempRunDir(absl::StrCat("early_stop_restore_", restore));
    RunConfig config = EarlyStopConfig(dir, "max", 8);
    config.mutable_train()->set_early_stop_restore_best(restore);
    config.mutable_checkpoint()->set_keep_last(1);
    ParameterStore store;
    RegressionTask task(store, 8);
    store.Finalize(3);
    ScriptedEval eval(kScript);  // best after step 2, stops after step 4
    Trainer::Options options = MicroBatches(1);
    options.eval = &eval;
    Trainer trainer(config, store, task, options);
    ASSERT_TRUE(trainer.Run().ok());
    const float* values = store.values().ptr<float>();
    const std::vector<float> weights(values, values + store.numel());
    const std::vector<float> ema(trainer.inference_weights(),
                                 trainer.inference_weights() + store.numel());
    const auto& expected = restore ? best : last;
    EXPECT_EQ(weights, expected.first) << restore;
    EXPECT_EQ(ema, expected.second) << restore;
    // keep_last = 1 prunes step 1's and 3's, never the best step's.
    const std::string root = CheckpointsRoot(dir) + "/";
    EXPECT_TRUE(IsCommittedCheckpoint(root + CheckpointDirName(4))) << restore;
    EXPECT_EQ(IsCommittedCheckpoint(root + CheckpointDirName(2)), restore) << restore;
    EXPECT_FALSE(std::filesystem::exists(root + CheckpointDirName(1))) << restore;
    EXPECT_NE(ReadWhole(dir + "/early_stop.json")
                  .find(restore ? ",\"restored\":\"" + root + CheckpointDirName(2) + "\"}"
                                : std::string(",\"restored\":null}")),
              std::string::npos)
        << ReadWhole(dir + "/early_stop.json");
  }
}

TEST(Trainer, EarlyStopOnAMetricTheEvaluationLacksIsAConfigError) {
  const std::string dir = TempRunDir("early_stop_unknown");
  RunConfig config = EarlyStopConfig(dir, "max", 4);
  config.mutable_train()->set_early_stop_metric("val_ndcg@10");
  ParameterStore store;
  RegressionTask task(store, 8);
  store.Finalize(3);
  ScriptedEval eval(kScript);
  Trainer::Options options = MicroBatches(1);
  options.eval = &eval;
  Trainer trainer(config, store, task, options);
  const absl::Status status = trainer.Run();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_NE(status.message().find("train.early_stop_metric=\"val_ndcg@10\": the evaluation "
                                  "reports other, score"),
            std::string::npos)
      << status;
}

}  // namespace
}  // namespace tessera
