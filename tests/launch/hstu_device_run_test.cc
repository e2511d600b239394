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
#include <sstream>
#include <string>
#include <vector>

#include "data/synthetic_interactions.h"
#include "launch/distributed.h"
#include "launch/train_command.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/config/config.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

// Each metrics.jsonl line without what differs between processes anyway
// (timings, throughput, peak fractions, resident memory), as written.
std::vector<std::string> LoggedNumbers(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    std::string kept;
    std::stringstream fields(line);
    for (std::string field; std::getline(fields, field, ',');) {
      if (field.find("second") != std::string::npos || field.find("peak") != std::string::npos ||
          field.find("eta") != std::string::npos || field.find("_per_") != std::string::npos ||
          field.find("time") != std::string::npos || field.find("rss") != std::string::npos) {
        continue;
      }
      kept += field + ",";
    }
    out.push_back(kept);
  }
  return out;
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

absl::Status TrainOn(const RunConfig& config, Backend& backend) {
  Distributed alone;
  alone.backend = &backend;
  return TrainRun(config, alone);
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
  ASSERT_TRUE(TrainOn(TinyHstuConfig(base, "cpu"), HostBackend()).ok());
  PretendDeviceBackend device;
  const absl::Status on_device = TrainOn(TinyHstuConfig(base, "device"), device);
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
  std::filesystem::create_directories(base + "/resumed/checkpoints");
  std::filesystem::copy(base + "/device/checkpoints/step_00000002",
                        base + "/resumed/checkpoints/step_00000002",
                        std::filesystem::copy_options::recursive);
  RunConfig resume = TinyHstuConfig(base, "resumed");
  resume.mutable_checkpoint()->set_resume(base + "/resumed/checkpoints/step_00000002");
  const absl::Status resumed = TrainOn(resume, device);
  ASSERT_TRUE(resumed.ok()) << resumed;
  const std::vector<std::string> tail = LoggedNumbers(base + "/resumed/metrics.jsonl");
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail.back(), cpu.back());
  EXPECT_EQ(ReadFile(base + "/resumed/final_metrics.json"),
            ReadFile(base + "/cpu/final_metrics.json"));
}

}  // namespace
}  // namespace tessera
