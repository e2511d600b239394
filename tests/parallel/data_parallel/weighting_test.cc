// Per-element weighting over replicas: ranks whose micro-batches hold
// unequal sample counts train exactly as one process on the same global
// batch in one micro-batch (the mean over the global batch's elements), with
// and without ZeRO-1.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "parallel/comm/mpi_communicator.h"
#include "parallel/data_parallel/data_parallel.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/nn/linear.h"
#include "runtime/train/trainer.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera {
namespace {

using parallel::testing::MpiForTests;

constexpr int64_t kIn = 5, kOut = 3, kGlobalBatch = 12;

// Linear regression; micro-batch m of this process holds sizes[m] samples,
// global samples [first + sum of earlier sizes, ...) of each step.
class UnequalTask : public TrainTask {
 public:
  UnequalTask(ParameterStore& store, std::vector<int64_t> sizes, int64_t first)
      : linear_(store, "linear", kIn, kOut), sizes_(std::move(sizes)), first_(first) {}

  absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                 float loss_scale, double* loss) override {
    int64_t start = first_;
    for (int m = 0; m < micro; ++m) start += sizes_[m];
    const int64_t count = sizes_[micro];
    Tensor x = arena.Allocate(DType::kF32, Shape{count, kIn});
    Tensor target = arena.Allocate(DType::kF32, Shape{count, kOut});
    for (int64_t i = 0; i < count; ++i) {
      Rng rng(static_cast<uint64_t>((step - 1) * kGlobalBatch + start + i));
      for (int64_t j = 0; j < kIn; ++j) x.data<float>()[i * kIn + j] = rng.Normal();
      for (int64_t j = 0; j < kOut; ++j) target.data<float>()[i * kOut + j] = rng.Normal();
    }
    Tensor y = linear_.Forward(arena, x);
    MicroBatchResult result;
    *loss = cpu::MseForward(y.data<float>(), target.data<float>(), y.numel());  // host memory
    result.samples = count;
    result.elements = static_cast<double>(count);
    Tensor dy = arena.AllocateUninitialized(DType::kF32, y.shape());
    cpu::MseBackward(y.data<float>(), target.data<float>(), dy.data<float>(), y.numel(),
                     loss_scale * static_cast<float>(count));
    linear_.Backward(arena, dy, false);
    return result;
  }
  double TrainingFlopsPerSample() const override { return 3 * linear_.ForwardFlops(1); }
  int64_t TokensPerSample() const override { return 1; }
  size_t PredictActivationBytes() const override { return 0; }

 private:
  Linear linear_;
  std::vector<int64_t> sizes_;
  int64_t first_;
};

RunConfig Config(const std::string& run_dir) {
  RunConfig config;
  config.mutable_train()->set_run_dir(run_dir);
  config.mutable_train()->set_steps(5);
  config.mutable_train()->set_progress("off");
  config.mutable_train()->set_global_batch(kGlobalBatch);
  config.mutable_optim()->set_lr(0.05);
  config.mutable_optim()->set_ema_decay(0);
  return config;
}

struct Trained {
  std::vector<float> weights;
  double last_loss = 0;
};

// Every parameter's values in order (the flat buffer's padding left out: it
// depends on the ZeRO shard multiple).
std::vector<float> ParameterValues(const ParameterStore& store) {
  std::vector<float> values;
  const float* base = store.values().data<float>();
  for (int id = 0; id < store.size(); ++id) {
    const ParamInfo& info = store.info(id);
    values.insert(values.end(), base + info.offset, base + info.offset + info.local_shape.numel());
  }
  return values;
}

std::string RunDir(const std::string& name, int rank) {
  const std::string dir = ::testing::TempDir() + "/tessera_weighting_" + name + "_" +
                          std::to_string(::getpid()) + "_" + std::to_string(rank);
  std::filesystem::remove_all(dir);
  return dir;
}

// One process, one micro-batch of the whole global batch: the oracle.
Trained OneProcess(int rank) {
  const RunConfig config = Config(RunDir("one", rank));
  ParameterStore store;
  UnequalTask task(store, {kGlobalBatch}, 0);
  store.Finalize(3);
  Trainer trainer(config, store, task, Trainer::Options());
  EXPECT_TRUE(trainer.Run().ok());
  return {ParameterValues(store), trainer.summary().last_loss};
}

// Rank r of W holds its share of the global batch in micro-batches of
// unequal sizes: ranks' totals differ too (W = 2: 3 and 9 samples).
std::vector<int64_t> SizesOf(int rank, int world) {
  if (world == 1) return {1, 4, 2, 5};
  if (world == 2) return rank == 0 ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{6, 3};
  // Any world: rank r takes a share of 1 or more, the last rank the rest.
  const int64_t mine = rank + 1 < world ? 1 : kGlobalBatch - (world - 1);
  return {mine};
}

Trained DataParallelRun(int zero_stage) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(60));
  TESSERA_CHECK(world.ok());
  const int rank = (*world)->rank(), size = (*world)->size();
  const RunConfig config = Config(RunDir("dp" + std::to_string(zero_stage), rank));
  const std::vector<int64_t> sizes = SizesOf(rank, size);
  int64_t first = 0;
  for (int r = 0; r < rank; ++r) {
    for (int64_t s : SizesOf(r, size)) first += s;
  }
  ParameterStore store;
  UnequalTask task(store, sizes, first);
  ParameterLayout layout;
  layout.shard_multiple = size;
  store.Finalize(3, layout);
  auto dp = parallel::DataParallel::Create(store, config.optim(), zero_stage, world->get(),
                                           world->get(), rank == 0);
  TESSERA_CHECK(dp.ok());
  Trainer::Options options;
  options.micro_batches = static_cast<int>(sizes.size());
  options.sync = dp->get();
  Trainer trainer(config, store, task, options);
  EXPECT_TRUE(trainer.Run().ok());
  return {ParameterValues(store), trainer.summary().last_loss};
}

void ExpectSame(const Trained& got, const Trained& want) {
  EXPECT_NEAR(got.last_loss, want.last_loss, 1e-6 * std::fabs(want.last_loss));
  ASSERT_EQ(got.weights.size(), want.weights.size());
  for (size_t i = 0; i < want.weights.size(); ++i) {
    EXPECT_NEAR(got.weights[i], want.weights[i], 1e-6 * (std::fabs(want.weights[i]) + 1e-3))
        << i;
  }
}

TEST(PerElementWeighting, UnequalCountsOverRanksAndMicroBatchesMatchOneProcess) {
  const int rank = MpiForTests()->world_rank();
  ExpectSame(DataParallelRun(0), OneProcess(rank));
}

TEST(PerElementWeighting, UnequalCountsMatchOneProcessUnderZero1) {
  const int rank = MpiForTests()->world_rank();
  ExpectSame(DataParallelRun(1), OneProcess(rank));
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
