// The tiny Mamba-2 hybrid (M*-ME: Mamba-2, attention, MLP, MoE; the
// vocabulary-parallel loss and the held-out evaluation) through `tessera
// train`'s code path on the pretend device (host memory whose backend
// reports CUDA, so a host read of device memory through Tensor::data<T>()
// aborts): it must log the CPU run's numbers and write its checkpoints bit
// for bit, resume on the device exactly, and read on the host per
// micro-batch only what the host needs.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

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

// Step losses, gradient norms and the evaluation's records, as written.
std::vector<std::string> LoggedNumbers(const std::string& path) {
  return LoggedFields(path, {"\"step\":", "\"loss\":", "\"aux_loss\":", "\"grad_norm\":",
                             "\"val_"});
}

// 4 steps of two micro-batches of 4 windows, EMA on (the checkpoints then
// hold it too), the held-out evaluation every 2 steps, a checkpoint every 2.
RunConfig TinyMambaConfig(const std::string& base, const std::string& run) {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/mamba_hybrid_tiny.textproto");
  config.mutable_data()->set_dir(base + "/tokens");
  config.mutable_data()->set_eval_dir(base + "/tokens");
  config.mutable_train()->set_run_dir(base + "/" + run);
  config.mutable_train()->set_steps(4);
  config.mutable_train()->set_threads(1);
  config.mutable_train()->set_micro_batch(4);
  config.mutable_train()->set_eval_every(2);
  config.mutable_train()->set_eval_samples(8);
  config.mutable_checkpoint()->set_every(2);
  config.mutable_optim()->set_ema_decay(0.9);
  return config;
}

TEST(MambaDeviceRun, ThePretendDeviceTrainsSavesAndResumesLikeTheCpu) {
  const std::string base = ::testing::TempDir() + "/tessera_mamba_device_run";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(testing::SynthesizeTinyLanguage(base + "/tokens").ok());
  const absl::Status on_cpu = TrainAlone(TinyMambaConfig(base, "cpu"), HostBackend());
  ASSERT_TRUE(on_cpu.ok()) << on_cpu;
  PretendDeviceBackend device;
  const absl::Status on_device = TrainAlone(TinyMambaConfig(base, "device"), device);
  ASSERT_TRUE(on_device.ok()) << on_device;
  const std::vector<std::string> cpu = LoggedNumbers(base + "/cpu/metrics.jsonl");
  ASSERT_EQ(cpu.size(), 6u);  // 4 steps and 2 evaluations
  EXPECT_EQ(LoggedNumbers(base + "/device/metrics.jsonl"), cpu);
  for (const char* step : {"step_00000002", "step_00000004"}) {
    ExpectSameCheckpoint(base + "/cpu/checkpoints/" + step, base + "/device/checkpoints/" + step);
  }

  // Resume the device run from its step-2 checkpoint (saved from device
  // memory), on the device: the CPU run's last steps and checkpoint.
  const absl::Status resumed = TrainAlone(
      ResumingFrom(TinyMambaConfig(base, "resumed"), base + "/device", "step_00000002"), device);
  ASSERT_TRUE(resumed.ok()) << resumed;
  const std::vector<std::string> tail = LoggedNumbers(base + "/resumed/metrics.jsonl");
  ASSERT_EQ(tail.size(), 3u);  // steps 3, 4 and the step-4 evaluation
  EXPECT_EQ(tail, std::vector<std::string>(cpu.end() - 3, cpu.end()));
  ExpectSameCheckpoint(base + "/cpu/checkpoints/step_00000004",
                       base + "/resumed/checkpoints/step_00000004");
}

// What a device run reads on the host per micro-batch, from the traffic of
// a 4-step and a 2-step run (their difference leaves out start-up and the
// final weights): the MoE layer's routing (expert choices, probabilities and
// offsets: 3.1 KB for 128 tokens, top-2 of 4 experts) and, at each log step
// (every step here), the step's scalars and the bits per token (tens of
// bytes) — under a quarter of one micro-batch's logits (32 KB: 128
// positions x 64 entries), which a host-side loss copies out and back.
TEST(MambaDeviceRun, OnlyTheLossAndTheRoutingAreReadOnTheHost) {
  const std::string base = ::testing::TempDir() + "/tessera_mamba_device_traffic";
  std::filesystem::remove_all(base);
  ASSERT_TRUE(testing::SynthesizeTinyLanguage(base + "/tokens").ok());
  size_t traffic[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    RunConfig config = TinyMambaConfig(base, i == 0 ? "two" : "four");
    config.mutable_data()->clear_eval_dir();
    config.mutable_train()->set_eval_every(0);
    config.mutable_checkpoint()->set_every(0);
    config.mutable_train()->set_steps(i == 0 ? 2 : 4);
    PretendDeviceBackend device;
    const absl::Status status = TrainAlone(config, device);
    ASSERT_TRUE(status.ok()) << status;
    traffic[i] = device.bytes_to_host();
  }
  const double micro_batches = 2 * 2;  // two more steps of two micro-batches
  const double per_micro_batch = static_cast<double>(traffic[1] - traffic[0]) / micro_batches;
  const double logits_bytes = 4.0 * 32 * 64 * sizeof(float);
  RecordProperty("host_bytes_per_micro_batch", static_cast<int>(per_micro_batch));
  EXPECT_GT(per_micro_batch, 0);
  EXPECT_LT(per_micro_batch, logits_bytes / 4) << "bytes read on the host per micro-batch";
}

}  // namespace
}  // namespace tessera
