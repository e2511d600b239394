// HSTU on a device whose memory the host cannot read, without a GPU: the
// tiny HSTU through `tessera train`'s code path on the pretend device (host
// memory that calls itself a GPU's; every host read of its buffers aborts
// and every host/device copy is checked for sides). The encoder's
// parameters live on the device and the item table in host memory, its
// rows copied over per batch; the run must log the CPU run's losses,
// gradient norms and evaluations bit for bit, write the same final
// leave-one-out metrics and weights, and resume from a checkpoint saved on
// the device exactly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/synthetic_interactions.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/config/config.h"
#include "tests/launch/device_run_util.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

using testing::LoggedFields;
using testing::ResumingFrom;
using testing::TrainAlone;

// Steps' losses and gradient norms, evaluations' metrics, as written.
std::vector<std::string> LoggedNumbers(const std::string& path) {
  return LoggedFields(path, {"\"step\":", "\"loss\":", "\"grad_norm\":",
                             "\"supervised_positions\":", "\"eval_samples\":", "\"val_"});
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

RunConfig TinyHstuConfig(const std::string& base, const std::string& run) {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/hstu_tiny.textproto");
  config.mutable_data()->set_dir(base + "/data");
  config.mutable_data()->set_eval_dir(base + "/data");
  config.mutable_train()->set_run_dir(base + "/" + run);
  config.mutable_train()->set_steps(4);
  config.mutable_train()->set_global_batch(16);
  config.mutable_train()->set_eval_every(2);
  config.mutable_train()->set_threads(1);
  config.mutable_checkpoint()->set_every(2);
  return config;
}

TEST(HstuDeviceRun, APretendDeviceTrainsEvaluatesSavesAndResumesLikeTheCpu) {
  const std::string base = ::testing::TempDir() + "/tessera_hstu_device_run";
  std::filesystem::remove_all(base);
  ClusteredInteractionsSpec spec;
  spec.num_users = 120;
  spec.num_items = 200;
  spec.min_length = 4;
  spec.max_length = 30;
  spec.seed = 3;
  ASSERT_TRUE(SynthesizeInteractions(base + "/data", spec).ok());
  ASSERT_TRUE(TrainAlone(TinyHstuConfig(base, "cpu"), HostBackend()).ok());
  PretendDeviceBackend device;
  const absl::Status on_device = TrainAlone(TinyHstuConfig(base, "device"), device);
  ASSERT_TRUE(on_device.ok()) << on_device;
  EXPECT_GT(device.bytes_to_host(), 0u);
  const std::vector<std::string> cpu = LoggedNumbers(base + "/cpu/metrics.jsonl");
  ASSERT_GE(cpu.size(), 6u);  // 4 steps and 2 evaluations
  EXPECT_EQ(LoggedNumbers(base + "/device/metrics.jsonl"), cpu);
  EXPECT_EQ(ReadFile(base + "/device/final_metrics.json"),
            ReadFile(base + "/cpu/final_metrics.json"));
  EXPECT_FALSE(ReadFile(base + "/cpu/final_metrics.json").empty());

  // Resume the device run from its step-2 checkpoint (saved from device
  // memory and the host table).
  const absl::Status resumed = TrainAlone(
      ResumingFrom(TinyHstuConfig(base, "resumed"), base + "/device", "step_00000002"), device);
  ASSERT_TRUE(resumed.ok()) << resumed;
  const std::vector<std::string> tail = LoggedNumbers(base + "/resumed/metrics.jsonl");
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail.back(), cpu.back());
  EXPECT_EQ(ReadFile(base + "/resumed/final_metrics.json"),
            ReadFile(base + "/cpu/final_metrics.json"));
}

}  // namespace
}  // namespace tessera
