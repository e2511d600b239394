// HSTU on a device whose memory the host cannot read, without a GPU: the
// tiny HSTU through `tessera train`'s code path on the pretend device (host
// memory that calls itself a GPU's; every host read of its buffers aborts
// and every host/device copy is checked for sides). The encoder's
// parameters and the item table live on the device (the table in host
// memory with model.hstu.table_placement=HOST, its rows copied over per
// batch); the run must log the CPU run's losses, gradient norms and
// evaluations bit for bit, write the same final leave-one-out metrics and
// weights, and resume from a checkpoint saved on the device exactly, with
// either placement of the table whichever wrote the checkpoint.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/config/config.h"
#include "tests/launch/device_run_util.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

using testing::ExpectSameCheckpoint;
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
  ASSERT_TRUE(testing::SynthesizeTinyInteractions(base + "/data", 120, 4, 30).ok());
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

  // The table kept in host memory on the device run: the same numbers.
  RunConfig host_table = TinyHstuConfig(base, "host_table");
  host_table.mutable_hstu()->set_table_placement(HstuConfig::HOST);
  const absl::Status on_host = TrainAlone(host_table, device);
  ASSERT_TRUE(on_host.ok()) << on_host;
  EXPECT_EQ(LoggedNumbers(base + "/host_table/metrics.jsonl"), cpu);

  // Resume from step-2 checkpoints: the device run's (its table saved from
  // device memory) on the device, with the table on the device and in host
  // memory, and the CPU run's (a host table) with the table on the device.
  struct Resume {
    const char* run;
    const char* from;
    HstuConfig::TablePlacement placement;
  };
  for (const Resume& r : {Resume{"resumed", "device", HstuConfig::AUTO},
                          Resume{"resumed_host_table", "device", HstuConfig::HOST},
                          Resume{"resumed_from_cpu", "cpu", HstuConfig::DEVICE}}) {
    RunConfig config =
        ResumingFrom(TinyHstuConfig(base, r.run), base + "/" + r.from, "step_00000002");
    config.mutable_hstu()->set_table_placement(r.placement);
    const absl::Status resumed = TrainAlone(config, device);
    ASSERT_TRUE(resumed.ok()) << r.run << ": " << resumed;
    const std::vector<std::string> tail = LoggedNumbers(base + "/" + r.run + "/metrics.jsonl");
    ASSERT_FALSE(tail.empty()) << r.run;
    EXPECT_EQ(tail.back(), cpu.back()) << r.run;
    EXPECT_EQ(ReadFile(base + "/" + r.run + "/final_metrics.json"),
              ReadFile(base + "/cpu/final_metrics.json"))
        << r.run;
  }
  // The checkpoints the resumed runs wrote at step 4 equal the CPU run's.
  for (const char* run : {"resumed", "resumed_host_table", "resumed_from_cpu"}) {
    ExpectSameCheckpoint(base + "/cpu/checkpoints/step_00000004",
                         base + "/" + std::string(run) + "/checkpoints/step_00000004");
  }
}

// What an HSTU device run reads on the host per micro-batch, from the
// traffic of a 4-step and a 2-step run (their difference leaves out
// start-up, the end-of-run evaluation and the final weights): with the
// table on the device, less than one table row (the table reads nothing;
// the rest is the loss), while the host table reads back each micro-batch's
// distinct rows' gradient (dozens of rows).
TEST(HstuDeviceRun, TheDeviceResidentTableReadsNothingOnTheHost) {
  const std::string base = ::testing::TempDir() + "/tessera_hstu_device_traffic";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(testing::SynthesizeTinyInteractions(base + "/data", 120, 4, 30).ok());
  double per_micro_batch[2] = {0, 0};  // the table on the device, in host memory
  for (int placement = 0; placement < 2; ++placement) {
    size_t traffic[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
      RunConfig config = TinyHstuConfig(base, absl::StrCat("run", placement, i));
      config.mutable_data()->clear_eval_dir();
      config.mutable_train()->set_eval_every(0);
      config.mutable_checkpoint()->set_every(0);
      config.mutable_train()->set_steps(i == 0 ? 2 : 4);
      config.mutable_train()->set_micro_batch(8);  // two micro-batches a step
      config.mutable_hstu()->set_table_placement(placement == 0 ? HstuConfig::DEVICE
                                                                : HstuConfig::HOST);
      PretendDeviceBackend device;
      const absl::Status status = TrainAlone(config, device);
      ASSERT_TRUE(status.ok()) << status;
      traffic[i] = device.bytes_to_host();
    }
    per_micro_batch[placement] = static_cast<double>(traffic[1] - traffic[0]) / (2 * 2);
  }
  const double row_bytes = 16 * sizeof(float);  // embedding_dim 16
  RecordProperty("host_bytes_per_micro_batch_device_table", static_cast<int>(per_micro_batch[0]));
  RecordProperty("host_bytes_per_micro_batch_host_table", static_cast<int>(per_micro_batch[1]));
  EXPECT_LT(per_micro_batch[0], row_bytes) << "bytes read on the host per micro-batch";
  EXPECT_GT(per_micro_batch[1] - per_micro_batch[0], 10 * row_bytes);
}

}  // namespace
}  // namespace tessera
