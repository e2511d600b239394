// A device run through `tessera train`'s code path without a GPU: host
// memory that calls itself a CUDA device's, so every host read of a device
// buffer (Tensor::data<T>()) aborts, while the ops are the CPU's — the run
// must give bit-identical losses to the plain CPU run, save checkpoints from
// the device and resume from them on the device exactly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/synthetic_images.h"
#include "launch/run_device.h"
#include "launch/train_command.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/device_select.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"
#include "tests/launch/device_run_util.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

using testing::LoggedFields;
using testing::ResumingFrom;
using testing::TrainAlone;

// "step", "loss", "aux_loss" and "grad_norm" of each line, as written.
std::vector<std::string> LoggedNumbers(const std::string& path) {
  return LoggedFields(path, {"\"step\":", "\"loss\":", "\"aux_loss\":", "\"grad_norm\":"});
}

RunConfig TinyDitConfig(const std::string& base, const std::string& run) {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/dit_moe_tiny.textproto");
  config.mutable_data()->set_dir(base + "/data");
  config.mutable_train()->set_run_dir(base + "/" + run);
  config.mutable_train()->set_steps(4);
  config.mutable_train()->set_threads(1);
  config.mutable_dit_moe()->set_sample_grid_per_class(0);
  config.mutable_checkpoint()->set_every(2);
  return config;
}

TEST(DeviceRun, APretendDeviceTrainsSavesAndResumesLikeTheCpu) {
  const std::string base = ::testing::TempDir() + "/tessera_device_run";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(SynthesizeImages(base + "/data", 64, 1, 8, 8, 10, 3, 64).ok());
  ASSERT_TRUE(TrainAlone(TinyDitConfig(base, "cpu"), HostBackend()).ok());
  PretendDeviceBackend device;
  const absl::Status on_device = TrainAlone(TinyDitConfig(base, "device"), device);
  ASSERT_TRUE(on_device.ok()) << on_device;
  const std::vector<std::string> cpu = LoggedNumbers(base + "/cpu/metrics.jsonl");
  ASSERT_EQ(cpu.size(), 4u);
  EXPECT_EQ(LoggedNumbers(base + "/device/metrics.jsonl"), cpu);
  // The checkpoint snapshots came down into pinned copies, asynchronously
  // (the inputs go up through the staging ring's pinned buffer).
  EXPECT_GT(device.async_copies(), 4) << "no asynchronous host<->device copy was made";
  EXPECT_GE(device.pinned_allocations(), 2);

  // Resume the device run from its step-2 checkpoint (saved from device memory).
  const absl::Status resumed = TrainAlone(
      ResumingFrom(TinyDitConfig(base, "resumed"), base + "/device", "step_00000002"), device);
  ASSERT_TRUE(resumed.ok()) << resumed;
  const std::vector<std::string> tail = LoggedNumbers(base + "/resumed/metrics.jsonl");
  EXPECT_EQ(tail, std::vector<std::string>(cpu.begin() + 2, cpu.end()));
}

// Everything a training run reads on the host besides its MoE layers' expert
// offsets is the same with and without a capacity factor, and a capacity
// layer reads no offsets (fixed slots, docs/cuda.md): the two runs' host
// traffic differs by exactly (E + 1) int64 per MoE layer per micro-batch.
TEST(DeviceRun, ADroplessMoeLayerReadsItsExpertOffsetsAndACapacityLayerNothing) {
  const std::string base = ::testing::TempDir() + "/tessera_device_moe_reads";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(SynthesizeImages(base + "/data", 64, 1, 8, 8, 10, 3, 64).ok());
  size_t traffic[2] = {0, 0};
  RunConfig config;
  for (int i = 0; i < 2; ++i) {
    config = TinyDitConfig(base, i == 0 ? "dropless" : "capacity");
    config.mutable_checkpoint()->set_every(0);
    config.mutable_train()->set_steps(2);
    config.mutable_train()->set_micro_batch(4);  // two micro-batches per step
    if (i == 1) config.mutable_dit_moe()->mutable_moe()->set_capacity_factor(1.5f);
    PretendDeviceBackend device;
    const absl::Status status = TrainAlone(config, device);
    ASSERT_TRUE(status.ok()) << status;
    traffic[i] = device.bytes_to_host();
  }
  const int64_t micro_batches = 2 * 2, layers = config.dit_moe().depth(),
                experts = config.dit_moe().moe().num_experts();
  EXPECT_EQ(traffic[0] - traffic[1],
            static_cast<size_t>(micro_batches * layers * (experts + 1)) * sizeof(int64_t));
}

TEST(DeviceRun, CudaWithoutAUsableGpuIsAUsageErrorNamingTheField) {
  if (VisibleCudaDevices() > 0) GTEST_SKIP() << "a CUDA device is present";
  RunConfig config;
  config.mutable_train()->set_device("cuda");
  Distributed alone;
  const absl::Status status = SelectRunBackend(config, alone);
  EXPECT_EQ(ExitCodeFor(status), 2) << status;
  EXPECT_NE(status.message().find("train.device"), std::string::npos) << status;
  EXPECT_EQ(alone.backend, nullptr);
}

}  // namespace
}  // namespace tessera
