#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"
#include "tests/runtime/config/contains.h"

namespace tessera {
namespace {

RunConfig Set(std::vector<std::string> assignments) {
  RunConfig config;
  absl::Status status = ApplyOverrides(&config, assignments);
  EXPECT_TRUE(status.ok()) << status;
  return config;
}

// The failure of one assignment on an empty config; must be a UsageError.
std::string SetError(absl::string_view assignment) {
  RunConfig config;
  absl::Status status = ApplyOverride(&config, assignment);
  EXPECT_FALSE(status.ok()) << assignment;
  EXPECT_EQ(ExitCodeFor(status), 2) << status;
  return std::string(status.message());
}

TEST(ApplyOverride, SetsEachScalarType) {
  const RunConfig config = Set({
      "parallel.tp=4",                    // int32
      "train.steps=123456789012",         // int64
      "train.seed=18446744073709551615",  // uint64
      "dit_moe.class_dropout_prob=0.25",  // float
      "optim.lr=3e-4",                    // double
      "parallel.sequence_parallel=true",  // bool
      "train.run_dir=runs/x y",           // string, verbatim
      "optim.schedule=COSINE",            // enum
  });
  EXPECT_EQ(config.parallel().tp(), 4);
  EXPECT_EQ(config.train().steps(), 123456789012);
  EXPECT_EQ(config.train().seed(), 18446744073709551615ull);
  EXPECT_FLOAT_EQ(config.dit_moe().class_dropout_prob(), 0.25f);
  EXPECT_DOUBLE_EQ(config.optim().lr(), 3e-4);
  EXPECT_TRUE(config.parallel().sequence_parallel());
  EXPECT_EQ(config.train().run_dir(), "runs/x y");
  EXPECT_EQ(config.optim().schedule(), OptimConfig::COSINE);
}

TEST(ApplyOverride, BoolsAcceptTrueFalseOneAndZero) {
  EXPECT_TRUE(Set({"checkpoint.async=1"}).checkpoint().async());
  EXPECT_FALSE(Set({"checkpoint.async=true", "checkpoint.async=0"}).checkpoint().async());
  EXPECT_FALSE(Set({"checkpoint.async=true", "checkpoint.async=false"}).checkpoint().async());
}

TEST(ApplyOverride, EnumsMatchNamesIgnoringCase) {
  EXPECT_EQ(Set({"model.dit_moe.objective=ddpm"}).dit_moe().objective(), DitMoeConfig::DDPM);
  EXPECT_EQ(Set({"optim.schedule=cosine"}).optim().schedule(), OptimConfig::COSINE);
}

TEST(ApplyOverride, StringsLoseOnePairOfQuotesAndMayBeEmpty) {
  EXPECT_EQ(Set({"data.dir=\"a/b\""}).data().dir(), "a/b");
  EXPECT_EQ(Set({"data.dir="}).data().dir(), "");
  EXPECT_EQ(Set({"train.run_dir=a=b"}).train().run_dir(), "a=b");  // first '=' splits
}

TEST(ApplyOverride, PathThroughTheModelOneofSelectsThatModel) {
  RunConfig config;
  EXPECT_FALSE(config.has_dit_moe());
  ASSERT_TRUE(ApplyOverride(&config, "model.dit_moe.depth=2").ok());
  EXPECT_TRUE(config.has_dit_moe());
  EXPECT_EQ(config.dit_moe().depth(), 2);
  EXPECT_EQ(config.dit_moe().hidden_size(), 384);  // the rest keeps its defaults
  // Without the oneof's name the same field is reached.
  ASSERT_TRUE(ApplyOverride(&config, "dit_moe.hidden_size=64").ok());
  EXPECT_EQ(config.dit_moe().hidden_size(), 64);
  EXPECT_EQ(config.dit_moe().depth(), 2);
}

TEST(ApplyOverride, LaterAssignmentsWin) {
  EXPECT_EQ(Set({"train.steps=5", "train.steps=9"}).train().steps(), 9);
}

TEST(ApplyOverride, UnknownPathNamesItAndListsTheValidFieldsAtThatLevel) {
  std::string message = SetError("train.stpes=5");
  EXPECT_TRUE(Contains(message, "train.stpes"));
  EXPECT_TRUE(Contains(message, "'stpes'"));
  EXPECT_TRUE(Contains(message, "run_dir, steps, log_every"));

  message = SetError("trian.steps=5");
  EXPECT_TRUE(Contains(message, "trian.steps"));
  EXPECT_TRUE(
      Contains(message, "model (dit_moe | mamba_hybrid | hstu), parallel, data, optim, train, "
                        "checkpoint, fault"));

  message = SetError("model.resnet.depth=5");
  EXPECT_TRUE(Contains(message, "'resnet'"));
  EXPECT_TRUE(Contains(message, "dit_moe"));

  message = SetError("model.parallel.tp=2");  // a real field, but not a model
  EXPECT_TRUE(Contains(message, "'parallel'"));

  message = SetError("model.dit_moe.nheads=2");
  EXPECT_TRUE(Contains(message, "'nheads'"));
  EXPECT_TRUE(Contains(message, "num_heads"));
}

TEST(ApplyOverride, PathsThatStopAtAMessageOrGoPastAValueAreRejected) {
  EXPECT_TRUE(Contains(SetError("train=5"), "is a message"));
  EXPECT_TRUE(Contains(SetError("model=dit_moe"), "dit_moe"));
  EXPECT_TRUE(Contains(SetError("train.steps.x=5"), "train.steps is a value"));
}

TEST(ApplyOverride, BadValueNamesFieldAndValue) {
  struct Case {
    const char* assignment;
    const char* field;
    const char* value;
  };
  const Case cases[] = {
      {"train.steps=ten", "train.steps", "'ten'"},
      {"parallel.tp=2.5", "parallel.tp", "'2.5'"},
      {"parallel.tp=99999999999", "parallel.tp", "'99999999999'"},  // overflows int32
      {"train.seed=-1", "train.seed", "'-1'"},
      {"optim.lr=fast", "optim.lr", "'fast'"},
      {"optim.lr=nan", "optim.lr", "'nan'"},
      {"dit_moe.cfg_scale=x", "dit_moe.cfg_scale", "'x'"},
      {"checkpoint.async=yes", "checkpoint.async", "'yes'"},
      {"optim.schedule=LINEAR", "optim.schedule", "CONSTANT, COSINE"},
      {"parallel.tp=", "parallel.tp", "''"},
  };
  for (const Case& c : cases) {
    const std::string message = SetError(c.assignment);
    EXPECT_TRUE(Contains(message, c.field)) << c.assignment;
    EXPECT_TRUE(Contains(message, c.value)) << c.assignment;
  }
}

TEST(ApplyOverride, AssignmentWithoutEqualsOrPathIsRejected) {
  EXPECT_TRUE(Contains(SetError("train.steps"), "path=value"));
  EXPECT_TRUE(Contains(SetError("=5"), "empty path"));
}

TEST(ApplyOverride, AFailedOverrideLeavesTheConfigUnchanged) {
  RunConfig config;
  EXPECT_FALSE(ApplyOverride(&config, "model.dit_moe.nheads=2").ok());
  EXPECT_FALSE(ApplyOverride(&config, "model.dit_moe.depth=two").ok());
  EXPECT_FALSE(ApplyOverride(&config, "train.steps.x=1").ok());
  EXPECT_FALSE(config.has_dit_moe());
  EXPECT_FALSE(config.has_train());
}

TEST(ApplyOverrides, StopsAtTheFirstFailure) {
  RunConfig config;
  absl::Status status = ApplyOverrides(&config, {"train.steps=3", "train.bad=1", "train.seed=4"});
  EXPECT_TRUE(Contains(status.message(), "train.bad"));
  EXPECT_EQ(config.train().steps(), 3);
  EXPECT_FALSE(config.train().has_seed());
}

}  // namespace
}  // namespace tessera
