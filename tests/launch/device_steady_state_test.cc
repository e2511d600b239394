// A device's memory is allocated while a run starts and by its first steps
// (the arena grows to the largest micro-batch), never by a step of the
// steady state: on a GPU a cudaMalloc inside a step would synchronise the
// device. Counted on the pretend device: a run of 8 steps allocates exactly
// what the same run of 4 steps does (fixed-shape batches, so the arena has
// reached its size after the first step; no checkpoint, evaluation or log
// line in between).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "data/synthetic_images.h"
#include "runtime/config/config.h"
#include "tests/launch/device_run_util.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

using testing::TrainAlone;

// Allocations of `config` run for `steps` steps on a fresh pretend device.
int64_t AllocationsOfRun(RunConfig config, int steps, const std::string& run_dir) {
  config.mutable_train()->set_steps(steps);
  config.mutable_train()->set_run_dir(run_dir);
  config.mutable_train()->set_log_every(1000);
  config.mutable_train()->set_threads(1);
  config.mutable_checkpoint()->set_every(0);
  PretendDeviceBackend device;
  const absl::Status status = TrainAlone(config, device);
  EXPECT_TRUE(status.ok()) << status;
  return device.allocations();
}

TEST(DeviceSteadyState, DitMoeStepsAllocateNoDeviceMemory) {
  const std::string base = ::testing::TempDir() + "/tessera_steady_dit";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(SynthesizeImages(base + "/data", 64, 1, 8, 8, 10, 3, 64).ok());
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/dit_moe_tiny.textproto");
  config.mutable_data()->set_dir(base + "/data");
  config.mutable_dit_moe()->set_sample_grid_per_class(0);
  const int64_t four = AllocationsOfRun(config, 4, base + "/four");
  const int64_t eight = AllocationsOfRun(config, 8, base + "/eight");
  EXPECT_GT(four, 0);
  EXPECT_EQ(eight, four) << "steps 5-8 allocated device memory";
}

TEST(DeviceSteadyState, MambaHybridStepsAllocateNoDeviceMemory) {
  const std::string base = ::testing::TempDir() + "/tessera_steady_mamba";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(testing::SynthesizeTinyLanguage(base + "/tokens").ok());
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/mamba_hybrid_tiny.textproto");
  config.mutable_data()->set_dir(base + "/tokens");
  config.mutable_train()->set_micro_batch(4);
  config.mutable_train()->set_eval_every(0);
  const int64_t four = AllocationsOfRun(config, 4, base + "/four");
  const int64_t eight = AllocationsOfRun(config, 8, base + "/eight");
  EXPECT_GT(four, 0);
  EXPECT_EQ(eight, four) << "steps 5-8 allocated device memory";
}

// HSTU with its item table on the device (the table's step scratch is
// grow-only): histories longer than max_len, so every batch has the same
// tokens, and every micro-batch's candidates cover the 200 items.
TEST(DeviceSteadyState, HstuStepsWithTheTableOnTheDeviceAllocateNoDeviceMemory) {
  const std::string base = ::testing::TempDir() + "/tessera_steady_hstu";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(testing::SynthesizeTinyInteractions(base + "/data", 64, 30, 30).ok());
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/hstu_tiny.textproto");
  config.mutable_data()->set_dir(base + "/data");
  config.mutable_train()->set_global_batch(16);
  config.mutable_train()->set_micro_batch(8);
  config.mutable_train()->set_eval_every(0);
  config.mutable_hstu()->set_table_placement(HstuConfig::DEVICE);
  const int64_t four = AllocationsOfRun(config, 4, base + "/four");
  const int64_t eight = AllocationsOfRun(config, 8, base + "/eight");
  EXPECT_GT(four, 0);
  EXPECT_EQ(eight, four) << "steps 5-8 allocated device memory";
}

}  // namespace
}  // namespace tessera
