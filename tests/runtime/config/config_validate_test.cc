#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"
#include "tests/runtime/config/contains.h"

namespace tessera {
namespace {

// An empty config with the model chosen and data.dir set: all defaults.
RunConfig Defaults() {
  RunConfig config;
  config.mutable_dit_moe();
  config.mutable_data()->set_dir("data/x");
  return config;
}

TEST(ValidateRunConfig, DefaultsOfAnEmptyDitMoeConfigAreValid) {
  const absl::Status status = ValidateRunConfig(Defaults(), 1);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(ValidateRunConfig, AValidParallelLayoutPasses) {
  RunConfig config = Defaults();
  ASSERT_TRUE(ApplyOverrides(&config, {"parallel.tp=2", "parallel.sp=3", "parallel.ep=4",
                                       "parallel.etp=2", "train.global_batch=64",
                                       "train.micro_batch=8", "model.dit_moe.num_heads=6"})
                  .ok());
  // (24 / 2)^2 = 144 tokens per image, divisible by sp = 3.
  ASSERT_TRUE(ApplyOverride(&config, "model.dit_moe.input_size=24").ok());
  // World 24: dp = 24 / (2 * 3) = 4, 64 / 4 = 16 samples per replica, split
  // into micro batches of 8; ep * etp = 8 divides 24; etp = tp; 4 divides 8 experts.
  const absl::Status status = ValidateRunConfig(config, 24);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(ValidateRunConfig, MissingModelIsReported) {
  RunConfig config;
  const absl::Status status = ValidateRunConfig(config, 1);
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(Contains(status.message(), "a model must be set"));
}

TEST(ValidateRunConfig, WorldSizeBelowOneIsReported) {
  EXPECT_TRUE(Contains(ValidateRunConfig(Defaults(), 0).message(), "world size 0"));
}

struct RuleCase {
  std::vector<std::string> overrides;
  int world_size;
  std::string message;
};

// One case per rule: the overrides break exactly that rule of a valid config.
const std::vector<RuleCase>& RuleCases() {
  static const auto* cases = new std::vector<RuleCase>{
      {{"parallel.tp=0"}, 1, "parallel.tp=0 must be >= 1"},
      {{"parallel.sp=0"}, 1, "parallel.sp=0 must be >= 1"},
      {{"parallel.ep=0"}, 1, "parallel.ep=0 must be >= 1"},
      {{"parallel.etp=0"}, 1, "parallel.etp=0 must be >= 1"},
      {{"parallel.tp=2"}, 3, "parallel.tp=2 * parallel.sp=1 = 2 must divide the world size 3"},
      {{"parallel.sp=2"}, 3, "parallel.tp=1 * parallel.sp=2 = 2 must divide the world size 3"},
      {{"parallel.ep=2"}, 3, "parallel.ep=2 * parallel.etp=1 = 2 must divide the world size 3"},
      {{"parallel.etp=2"}, 2, "parallel.etp=2 must be 1 or parallel.tp=1"},
      {{"parallel.zero_stage=2"}, 1, "parallel.zero_stage=2 must be 0 or 1"},
      {{"parallel.collective_timeout_s=0"}, 1, "parallel.collective_timeout_s=0 must be > 0"},
      // train
      {{"train.run_dir="}, 1, "train.run_dir must not be empty"},
      {{"train.steps=0"}, 1, "train.steps=0 must be >= 1"},
      {{"train.log_every=0"}, 1, "train.log_every=0 must be >= 1"},
      {{"train.global_batch=0"}, 1, "train.global_batch=0 must be >= 1"},
      {{"train.global_batch=33"},
       2,
       "train.global_batch=33 must be divisible by the data-parallel size dp = world size / "
       "(tp * sp) = 2"},
      {{"train.micro_batch=-1"}, 1, "train.micro_batch=-1 must be >= 0"},
      {{"train.micro_batch=5"}, 2, "train.micro_batch=5 must divide train.global_batch / dp = 16"},
      {{"train.threads=-1"}, 1, "train.threads=-1 must be >= 0"},
      {{"train.progress=sometimes"}, 1, "train.progress=\"sometimes\" must be auto, on or off"},
      {{"train.precision=fp16"}, 1, "train.precision=\"fp16\" must be fp32 or bf16"},
      // optim
      {{"optim.lr=0"}, 1, "optim.lr=0 must be > 0"},
      {{"optim.min_lr=-1e-05"}, 1, "optim.min_lr=-1e-05 must be in [0, optim.lr=0.0001]"},
      {{"optim.min_lr=0.001"}, 1, "optim.min_lr=0.001 must be in [0, optim.lr=0.0001]"},
      {{"optim.warmup_steps=-1"}, 1, "optim.warmup_steps=-1 must be >= 0"},
      {{"optim.beta1=1"}, 1, "optim.beta1=1 must be in [0, 1)"},
      {{"optim.beta2=-0.1"}, 1, "optim.beta2=-0.1 must be in [0, 1)"},
      {{"optim.eps=0"}, 1, "optim.eps=0 must be > 0"},
      {{"optim.weight_decay=-1"}, 1, "optim.weight_decay=-1 must be >= 0"},
      {{"optim.grad_clip=-1"}, 1, "optim.grad_clip=-1 must be >= 0"},
      {{"optim.ema_decay=1"}, 1, "optim.ema_decay=1 must be in [0, 1)"},
      {{"optim.ema_decay=-0.5"}, 1, "optim.ema_decay=-0.5 must be in [0, 1)"},
      // data
      {{"data.dir="}, 1, "data.dir must not be empty"},
      {{"data.prefetch=0"}, 1, "data.prefetch=0 must be >= 1"},
      // checkpoint
      {{"checkpoint.every=-1"}, 1, "checkpoint.every=-1 must be >= 0 (0: never)"},
      {{"checkpoint.keep_last=-2"}, 1, "checkpoint.keep_last=-2 must be >= 0 (0: all)"},
      {{"fault.kill_rank=1"}, 1, "fault.kill_rank=1 must be -1 (off) or a rank below the world size 1"},
      {{"fault.hang_rank=-2"}, 1, "fault.hang_rank=-2 must be -1 (off) or a rank below the world size 1"},
      {{"fault.kill_rank=0"}, 1, "fault.at_step=-1 must be >= 1 when fault.kill_rank, fault.hang_rank or fault.corrupt_write is set"},
      {{"fault.at_phase=loss"}, 1, "fault.at_phase=\"loss\" must be one of \"forward\" (the default), \"backward\", \"reduce\", \"optimizer\", \"save\""},
  };
  return *cases;
}

TEST(ValidateRunConfig, EachRuleFiresWithItsMessage) {
  for (const RuleCase& rule : RuleCases()) {
    RunConfig config = Defaults();
    ASSERT_TRUE(ApplyOverrides(&config, rule.overrides).ok()) << rule.message;
    const absl::Status status = ValidateRunConfig(config, rule.world_size);
    EXPECT_EQ(ExitCodeFor(status), 2) << rule.message;
    EXPECT_TRUE(Contains(status.message(), rule.message));
  }
}

TEST(ValidateRunConfig, NanValuesFailTheirRule) {
  RunConfig config = Defaults();
  config.mutable_optim()->set_lr(std::numeric_limits<double>::quiet_NaN());
  EXPECT_TRUE(Contains(ValidateRunConfig(config, 1).message(), "optim.lr=nan must be > 0"));
}

TEST(ValidateRunConfig, ExplicitDefaultsOfUnsupportedFeaturesAreAccepted) {
  RunConfig config = Defaults();
  ASSERT_TRUE(ApplyOverrides(&config, {"checkpoint.every=0", "checkpoint.resume=",
                                       "fault.kill_rank=-1", "checkpoint.keep_last=5"})
                  .ok());
  const absl::Status status = ValidateRunConfig(config, 1);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(ValidateRunConfig, ReportsEveryFailureAtOnce) {
  RunConfig config = Defaults();
  ASSERT_TRUE(ApplyOverrides(&config, {"train.steps=0", "optim.eps=0", "data.prefetch=0"}).ok());
  const std::string message(ValidateRunConfig(config, 1).message());
  EXPECT_TRUE(Contains(message, "train.steps=0 must be >= 1; "));
  EXPECT_TRUE(Contains(message, "optim.eps=0 must be > 0; "));
  EXPECT_TRUE(Contains(message, "data.prefetch=0 must be >= 1"));
}

}  // namespace
}  // namespace tessera
