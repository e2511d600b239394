// A model registered only from this test file (no line of launch/ or of
// models/registry.cc names it) trains through `tessera train`'s code path
// (TrainRun): linear regression read from a tiny synthetic data dir, its
// config message an extension of RunConfig (tests/launch/tiny_model.proto).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "launch/train_command.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/nn/linear.h"
#include "tests/launch/tiny_model.pb.h"

namespace tessera {
namespace {

using testing::TinyRegressionConfig;

// Rows of "x_0 .. x_{in-1} y_0 .. y_{out-1}" in <dir>/points.txt.
class TinyRegressionTask : public TrainTask {
 public:
  TinyRegressionTask(Linear& linear, std::vector<float> rows, int64_t in, int64_t out,
                     int64_t micro_batch, int replica, int replicas)
      : linear_(linear), rows_(std::move(rows)), in_(in), out_(out), micro_batch_(micro_batch),
        replica_(replica), replicas_(replicas) {}

  absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                 float loss_scale, double* loss) override {
    const int64_t width = in_ + out_, count = static_cast<int64_t>(rows_.size()) / width;
    Tensor x = arena.Allocate(DType::kF32, Shape{micro_batch_, in_});
    Tensor target = arena.Allocate(DType::kF32, Shape{micro_batch_, out_});
    for (int64_t i = 0; i < micro_batch_; ++i) {
      const int64_t global = ((step - 1) * replicas_ + replica_) * 64 + micro * micro_batch_ + i;
      const float* row = rows_.data() + (global % count) * width;
      for (int64_t j = 0; j < in_; ++j) x.data<float>()[i * in_ + j] = row[j];
      for (int64_t j = 0; j < out_; ++j) target.data<float>()[i * out_ + j] = row[in_ + j];
    }
    Tensor y = linear_.Forward(arena, x);
    MicroBatchResult result;
    *loss = cpu::MseForward(y.data<float>(), target.data<float>(), y.numel());  // host memory
    result.samples = micro_batch_;
    result.elements = static_cast<double>(micro_batch_);
    Tensor dy = arena.AllocateUninitialized(DType::kF32, y.shape());
    cpu::MseBackward(y.data<float>(), target.data<float>(), dy.data<float>(), y.numel(),
                     loss_scale * static_cast<float>(micro_batch_));
    BeforeBackward();
    linear_.Backward(arena, dy, false);
    return result;
  }
  double TrainingFlopsPerSample() const override { return 3 * linear_.ForwardFlops(1); }
  int64_t TokensPerSample() const override { return 1; }
  size_t PredictActivationBytes() const override { return 1 << 16; }

 private:
  Linear& linear_;
  std::vector<float> rows_;
  int64_t in_, out_, micro_batch_;
  int replica_, replicas_;
};

class TinyRegressionModel : public Model {
 public:
  explicit TinyRegressionModel(const RunConfig& config)
      : config_(config),
        settings_(config.GetExtension(testing::tiny_regression)),
        linear_(store_, "linear", settings_.inputs(), settings_.outputs()) {}

  ParameterStore& store() override { return store_; }
  absl::StatusOr<std::unique_ptr<TrainTask>> CreateTask(const TaskOptions& options) override {
    std::ifstream in(config_.data().dir() + "/points.txt");
    if (!in) return DataError("data.dir: no points.txt");
    std::vector<float> rows;
    for (float value; in >> value;) rows.push_back(value);
    return std::unique_ptr<TrainTask>(new TinyRegressionTask(
        linear_, std::move(rows), settings_.inputs(), settings_.outputs(), options.micro_batch,
        options.replica, options.num_replicas));
  }
  void SetOnGradientsReady(std::function<void(int, int)>) override {}
  absl::Status FinishRun(const std::string& run_dir) override {
    std::ofstream(run_dir + "/finished.txt") << "tiny_regression\n";
    return absl::OkStatus();
  }

 private:
  RunConfig config_;
  TinyRegressionConfig settings_;
  ParameterStore store_;
  Linear linear_;
};

ModelFamily TinyRegressionFamily() {
  ModelFamily family;
  family.name = "tiny_regression";
  family.title = "tiny regression (test)";
  family.validate = [](const RunConfig& config, int, ConfigChecker& check) {
    const TinyRegressionConfig& m = config.GetExtension(testing::tiny_regression);
    check.Expect(m.inputs() >= 1, Field("model.tiny_regression.inputs", m.inputs()) +
                                      " must be >= 1");
  };
  family.build = [](const RunConfig& config, const ParameterLayout& layout,
                    const parallel::ModelParallel*) -> absl::StatusOr<std::unique_ptr<Model>> {
    auto model = std::make_unique<TinyRegressionModel>(config);
    model->store().Finalize(config.train().seed(), layout);
    return std::unique_ptr<Model>(std::move(model));
  };
  return family;
}

const bool registered = RegisterModelFamily(TinyRegressionFamily());

// y = A x for a fixed A, 64 points.
std::string WritePoints(const std::string& dir, int in, int out) {
  std::filesystem::create_directories(dir);
  std::ofstream file(dir + "/points.txt");
  Rng rng(7);
  for (int n = 0; n < 64; ++n) {
    std::vector<float> x(in);
    for (float& v : x) v = rng.Normal();
    for (float v : x) file << v << ' ';
    for (int j = 0; j < out; ++j) {
      float y = 0;
      for (int k = 0; k < in; ++k) y += 0.5f * static_cast<float>((j + 2 * k) % 3 - 1) * x[k];
      file << y << ' ';
    }
    file << '\n';
  }
  return dir;
}

std::vector<double> LoggedLosses(const std::string& path) {
  std::ifstream in(path);
  std::vector<double> losses;
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find("\"loss\":");
    if (at != std::string::npos) losses.push_back(std::stod(line.substr(at + 7)));
  }
  return losses;
}

TEST(TrainRun, AModelRegisteredFromATestFileTrainsThroughTheTrainCommand) {
  ASSERT_TRUE(registered);
  const std::string base = ::testing::TempDir() + "/tessera_train_run";
  std::filesystem::remove_all(base);
  RunConfig config;
  config.MutableExtension(testing::tiny_regression)->set_inputs(4);
  config.mutable_data()->set_dir(WritePoints(base + "/data", 4, 2));
  config.mutable_train()->set_run_dir(base + "/run");
  config.mutable_train()->set_steps(30);
  config.mutable_train()->set_log_every(1);
  config.mutable_train()->set_global_batch(8);
  config.mutable_train()->set_micro_batch(4);
  config.mutable_train()->set_threads(1);
  config.mutable_train()->set_progress("off");
  config.mutable_train()->set_device("cpu");  // its task calls the CPU kernels directly
  config.mutable_optim()->set_lr(0.05);
  config.mutable_optim()->set_ema_decay(0);
  Distributed alone;
  const absl::Status status = TrainRun(config, alone);
  ASSERT_TRUE(status.ok()) << status;

  const std::vector<double> losses = LoggedLosses(base + "/run/metrics.jsonl");
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), 0.2 * losses.front()) << losses.front() << " -> " << losses.back();
  EXPECT_TRUE(std::filesystem::exists(base + "/run/weights.h5"));
  EXPECT_TRUE(std::filesystem::exists(base + "/run/finished.txt"));  // the end-of-run hook
  std::ifstream written(base + "/run/config.textproto");
  std::stringstream text;
  text << written.rdbuf();
  EXPECT_NE(text.str().find("[tessera.testing.tiny_regression]"), std::string::npos)
      << text.str();
}

TEST(TrainRun, TheTestModelsOwnRulesAreCheckedWithTheSharedOnes) {
  RunConfig config;
  config.MutableExtension(testing::tiny_regression)->set_inputs(0);
  config.mutable_train()->set_steps(0);
  config.mutable_data()->set_dir("unused");
  const absl::Status status = ValidateRun(config, 1);
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_NE(status.message().find("model.tiny_regression.inputs=0 must be >= 1"),
            std::string::npos)
      << status;
  EXPECT_NE(status.message().find("train.steps=0 must be >= 1"), std::string::npos) << status;
}

}  // namespace
}  // namespace tessera
