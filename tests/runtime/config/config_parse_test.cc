#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"
#include "tests/runtime/config/contains.h"

namespace tessera {
namespace {

TEST(ParseRunConfig, ReadsEverySectionOfAGoodConfig) {
  const char* text = R"pb(
    # a comment
    dit_moe { hidden_size: 64 num_heads: 4 objective: DDPM class_dropout_prob: 0.25 }
    parallel { tp: 2 sequence_parallel: true collective_timeout_s: 12.5 }
    data { dir: "some/dir" }
    optim { lr: 3e-4 schedule: COSINE }
    train { steps: 7 seed: 18446744073709551615 progress: "off" }
  )pb";
  absl::StatusOr<RunConfig> config = ParseRunConfig(text, "good.textproto");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->has_dit_moe());
  EXPECT_EQ(config->dit_moe().hidden_size(), 64);
  EXPECT_EQ(config->dit_moe().num_heads(), 4);
  EXPECT_EQ(config->dit_moe().objective(), DitMoeConfig::DDPM);
  EXPECT_FLOAT_EQ(config->dit_moe().class_dropout_prob(), 0.25f);
  EXPECT_EQ(config->dit_moe().depth(), 12);  // default from config.proto
  EXPECT_EQ(config->parallel().tp(), 2);
  EXPECT_TRUE(config->parallel().sequence_parallel());
  EXPECT_DOUBLE_EQ(config->parallel().collective_timeout_s(), 12.5);
  EXPECT_EQ(config->data().dir(), "some/dir");
  EXPECT_DOUBLE_EQ(config->optim().lr(), 3e-4);
  EXPECT_EQ(config->optim().schedule(), OptimConfig::COSINE);
  EXPECT_EQ(config->train().steps(), 7);
  EXPECT_EQ(config->train().seed(), 18446744073709551615ull);
  EXPECT_EQ(config->train().progress(), "off");
}

TEST(ParseRunConfig, MalformedTextNamesFileLineAndColumn) {
  // Line 3 is missing its closing brace; the parser notices at the end of input.
  const char* text = "train { steps: 5 }\n\nparallel { tp: 2\n";
  absl::Status status = ParseRunConfig(text, "broken.textproto").status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(Contains(status.message(), "broken.textproto:4:1:"));
}

TEST(ParseRunConfig, UnknownFieldNamesItAndItsPosition) {
  const char* text = "train {\n  steps: 5\n  stpes: 6\n}\n";
  absl::Status status = ParseRunConfig(text, "typo.textproto").status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(Contains(status.message(), "typo.textproto:3:"));
  EXPECT_TRUE(Contains(status.message(), "stpes"));
}

TEST(ParseRunConfig, ValueOfTheWrongTypeNamesTheField) {
  absl::Status status = ParseRunConfig("optim {\n  lr: \"fast\"\n}\n", "type.textproto").status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(Contains(status.message(), "type.textproto:2:"));
  EXPECT_TRUE(Contains(status.message(), "(at `lr: \"fast\"`)"));

  status = ParseRunConfig("train { steps: 1.5 }", "int.textproto").status();
  EXPECT_TRUE(Contains(status.message(), "int.textproto:1:"));
  EXPECT_TRUE(Contains(status.message(), "steps: 1.5"));

  status = ParseRunConfig("optim { schedule: LINEAR }", "enum.textproto").status();
  EXPECT_TRUE(Contains(status.message(), "enum.textproto:1:"));
  EXPECT_TRUE(Contains(status.message(), "LINEAR"));
}

TEST(LoadRunConfig, MissingFileIsAUsageErrorNamingIt) {
  absl::Status status = LoadRunConfig("/nonexistent/dir/run.textproto").status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(Contains(status.message(), "/nonexistent/dir/run.textproto"));
}

TEST(LoadRunConfig, DirectoryIsAUsageErrorNamingIt) {
  absl::Status status = LoadRunConfig(TESSERA_SOURCE_DIR "/configs").status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(Contains(status.message(), TESSERA_SOURCE_DIR "/configs"));
}

TEST(LoadRunConfig, ReadsAFileAndReportsPositionsAgainstItsPath) {
  const std::string path = std::string(TESSERA_BINARY_DIR) + "/config_parse_test.textproto";
  std::FILE* file = std::fopen(path.c_str(), "w");
  ASSERT_NE(file, nullptr);
  std::fputs("train { steps: 3 }\ntrain { bogus: 1 }\n", file);
  std::fclose(file);
  absl::Status status = LoadRunConfig(path).status();
  EXPECT_TRUE(Contains(status.message(), path + ":2:"));

  file = std::fopen(path.c_str(), "w");
  std::fputs("train { steps: 3 }\n", file);
  std::fclose(file);
  absl::StatusOr<RunConfig> config = LoadRunConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->train().steps(), 3);
  std::remove(path.c_str());
}

TEST(RunConfigToText, PrintsEveryFieldWithDefaultsAndParsesBackToTheSameValues) {
  RunConfig config;
  config.mutable_dit_moe()->set_depth(3);
  config.mutable_train()->set_steps(11);
  const std::string text = RunConfigToText(config);
  // Unset fields appear with their config.proto defaults.
  EXPECT_TRUE(Contains(text, "hidden_size: 384"));
  EXPECT_TRUE(Contains(text, "collective_timeout_s: 300"));
  EXPECT_TRUE(Contains(text, "progress: \"auto\""));
  EXPECT_TRUE(Contains(text, "kill_rank: -1"));
  EXPECT_TRUE(Contains(text, "objective: RECTIFIED_FLOW"));
  absl::StatusOr<RunConfig> parsed = ParseRunConfig(text, "printed");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->dit_moe().depth(), 3);
  EXPECT_EQ(parsed->train().steps(), 11);
  EXPECT_TRUE(parsed->dit_moe().has_hidden_size());
  EXPECT_TRUE(parsed->fault().has_at_phase());
}

TEST(RunConfigToText, LeavesTheModelUnsetWhenNoneWasChosen) {
  const std::string text = RunConfigToText(RunConfig());
  EXPECT_FALSE(absl::StrContains(text, "dit_moe"));
  EXPECT_TRUE(Contains(text, "steps: 1000"));
}

TEST(DataParallelSize, IsWorldOverTpTimesSpAndMicroBatchDefaultsToTheReplicaShare) {
  RunConfig config;
  config.mutable_parallel()->set_tp(2);
  config.mutable_parallel()->set_sp(2);
  config.mutable_train()->set_global_batch(48);
  EXPECT_EQ(DataParallelSize(config, 12), 3);
  EXPECT_EQ(MicroBatch(config, 12), 16);
  config.mutable_train()->set_micro_batch(4);
  EXPECT_EQ(MicroBatch(config, 12), 4);
}

}  // namespace
}  // namespace tessera
