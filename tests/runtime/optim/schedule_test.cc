#include "runtime/optim/schedule.h"

#include <cmath>

#include "gtest/gtest.h"

namespace tessera {
namespace {

OptimConfig Config(OptimConfig::Schedule schedule, double lr, double min_lr, int warmup) {
  OptimConfig config;
  config.set_schedule(schedule);
  config.set_lr(lr);
  config.set_min_lr(min_lr);
  config.set_warmup_steps(warmup);
  return config;
}

TEST(LearningRate, WarmupRisesLinearlyFromLrOverWarmupToLr) {
  const OptimConfig config = Config(OptimConfig::CONSTANT, 1e-3, 0, 10);
  EXPECT_DOUBLE_EQ(LearningRate(config, 0, 100), 1e-3 / 10);
  EXPECT_DOUBLE_EQ(LearningRate(config, 4, 100), 1e-3 * 5 / 10);
  EXPECT_DOUBLE_EQ(LearningRate(config, 9, 100), 1e-3);  // last warmup step
  EXPECT_DOUBLE_EQ(LearningRate(config, 10, 100), 1e-3);
}

TEST(LearningRate, ConstantStaysAtLrWithoutWarmup) {
  const OptimConfig config = Config(OptimConfig::CONSTANT, 3e-4, 1e-5, 0);
  for (int64_t step : {0, 1, 50, 99, 100, 1000}) {
    EXPECT_DOUBLE_EQ(LearningRate(config, step, 100), 3e-4);
  }
}

TEST(LearningRate, CosineStartsAtLrPassesMidpointAndEndsAtMinLr) {
  const double lr = 1e-3, min_lr = 1e-4;
  const OptimConfig config = Config(OptimConfig::COSINE, lr, min_lr, 10);
  const int64_t total = 110;                              // 100 decay steps after warmup
  EXPECT_DOUBLE_EQ(LearningRate(config, 9, total), lr);   // end of warmup
  EXPECT_DOUBLE_EQ(LearningRate(config, 10, total), lr);  // cosine at progress 0
  EXPECT_NEAR(LearningRate(config, 60, total), (lr + min_lr) / 2, 1e-15);  // progress 1/2
  // progress 1/4: cos(pi/4) = sqrt(2)/2.
  EXPECT_NEAR(LearningRate(config, 35, total), min_lr + (lr - min_lr) * (1 + std::sqrt(0.5)) / 2,
              1e-15);
  EXPECT_NEAR(LearningRate(config, total, total), min_lr, 1e-15);
  EXPECT_NEAR(LearningRate(config, total + 50, total), min_lr, 1e-15);
  // The last step of the run is just above min_lr.
  const double last = LearningRate(config, total - 1, total);
  EXPECT_GT(last, min_lr);
  EXPECT_NEAR(last, min_lr + (lr - min_lr) * (1 + std::cos(M_PI * 0.99)) / 2, 1e-15);
}

TEST(LearningRate, CosineWithoutDecayStepsGivesMinLrAfterWarmup) {
  const OptimConfig config = Config(OptimConfig::COSINE, 1e-3, 2e-4, 10);
  EXPECT_DOUBLE_EQ(LearningRate(config, 9, 10), 1e-3);
  EXPECT_DOUBLE_EQ(LearningRate(config, 10, 10), 2e-4);
  EXPECT_DOUBLE_EQ(LearningRate(config, 12, 5), 2e-4);
}

}  // namespace
}  // namespace tessera
