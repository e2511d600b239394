// A checkpoint is what its manifest and directory both say: manifests edited
// into inconsistency are refused by every reader (exit code 4) before any
// number in them is trusted or any declared size allocated.
#include "runtime/checkpoint/manifest_checks.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <limits>

#include "runtime/base/errors.h"
#include "runtime/checkpoint/checkpoint_files.h"
#include "runtime/checkpoint/checkpoint_tools.h"
#include "tests/runtime/checkpoint/test_tensors.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

class ManifestChecksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_dir_ = (fs::temp_directory_path() /
                ("tessera_manifest_checks_" + std::to_string(::getpid()) + "_" +
                 ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                   .string();
    fs::remove_all(run_dir_);
    fs::create_directories(run_dir_);
  }
  void TearDown() override { fs::remove_all(run_dir_); }

  // w [3, 5] in two column halves, b [4] whole, saved at `step`.
  std::string Save(int64_t step) {
    CheckpointSnapshot s;
    s.meta.step = step;
    s.meta.rng_state = "counter seed=1 step=" + std::to_string(step);
    for (const PieceDesc& d : {PieceDesc::Box("w", "param", {3, 5}, {0, 0}, {3, 2}),
                               PieceDesc::Box("w", "param", {3, 5}, {0, 2}, {3, 3}),
                               PieceDesc::Whole("b", "param", {4})}) {
      s.pieces.push_back({d, testing::OracleData(d)});
    }
    LocalHostGroup group;
    EXPECT_TRUE(SaveCheckpoint(group, run_dir_, s).ok());
    return CheckpointsRoot(run_dir_) + "/" + CheckpointDirName(step);
  }

  // Rewrites dir's manifest.pb after `edit` (bypassing the reader's checks).
  void EditManifest(const std::string& dir,
                    const std::function<void(CheckpointManifest*)>& edit) {
    auto bytes = ReadWholeFile(dir + "/manifest.pb");
    ASSERT_TRUE(bytes.ok());
    CheckpointManifest manifest;
    ASSERT_TRUE(manifest.ParseFromString(*bytes));
    edit(&manifest);
    ASSERT_TRUE(WriteFileDurably(dir + "/manifest.pb", manifest.SerializeAsString()).ok());
  }

  // Every reader refuses the checkpoint with exit code 4 and `needle`.
  void ExpectRefusedByEveryReader(const std::string& dir, const std::string& needle) {
    const absl::Status read = ReadCheckpointManifest(dir).status();
    EXPECT_EQ(ExitCodeFor(read), 4) << read;
    EXPECT_NE(read.message().find(needle), std::string::npos) << read;
    const absl::Status verify = VerifyCheckpoint(dir).status();
    EXPECT_EQ(ExitCodeFor(verify), 4) << verify;
    const absl::Status exported = ExportCheckpoint(dir, run_dir_ + "/out.h5", {});
    EXPECT_EQ(ExitCodeFor(exported), 4) << exported;
  }

  std::string run_dir_;
};

TEST(ParseStepDirectoryName, AcceptsOnlyStepAndDigitsThatFit) {
  EXPECT_EQ(ParseStepDirectoryName("step_00000010"), 10);
  EXPECT_EQ(ParseStepDirectoryName("step_0"), 0);
  EXPECT_EQ(ParseStepDirectoryName("step_123456789012345678"), 123456789012345678);
  for (const char* bad : {"step_-0000010", "step_99999999999999999999999", "step_", "step_+1",
                          "step_ 1", "step_1.tmp", "step_1x", "steps_1", "1"}) {
    EXPECT_FALSE(ParseStepDirectoryName(bad).has_value()) << bad;
  }
}

TEST_F(ManifestChecksTest, AnIntactCheckpointPasses) {
  const std::string dir = Save(10);
  EXPECT_TRUE(ReadCheckpointManifest(dir).ok());
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->problems.empty()) << report->problems.front();
}

TEST_F(ManifestChecksTest, StepDifferentFromTheDirectoryNameIsRefused) {
  const std::string dir = Save(10);
  EditManifest(dir, [](CheckpointManifest* m) {
    m->set_step(3);
    m->set_rng_state(0, "counter seed=1 step=3");
  });
  ExpectRefusedByEveryReader(dir, "manifest step 3 differs from the directory's step 10");
}

TEST_F(ManifestChecksTest, NegativeStepIsRefused) {
  const std::string dir = Save(10);
  EditManifest(dir, [](CheckpointManifest* m) { m->set_step(-5); });
  ExpectRefusedByEveryReader(dir, "manifest step -5 is negative");
}

TEST_F(ManifestChecksTest, SamplerPositionAndEpochOutOfRangeAreRefused) {
  const std::string dir = Save(10);
  EditManifest(dir, [](CheckpointManifest* m) {
    m->set_sampler_position(std::numeric_limits<int64_t>::max());
  });
  ExpectRefusedByEveryReader(dir, "sampler_position 9223372036854775807");
  EditManifest(dir, [](CheckpointManifest* m) {
    m->set_sampler_position(0);
    m->set_sampler_epoch(-1);
  });
  ExpectRefusedByEveryReader(dir, "sampler_epoch -1");
}

TEST_F(ManifestChecksTest, RngStateOfAnotherStepIsRefused) {
  const std::string dir = Save(10);
  EditManifest(dir, [](CheckpointManifest* m) { m->set_rng_state(0, "counter seed=1 step=4"); });
  ExpectRefusedByEveryReader(dir, "does not name step 10");
}

TEST_F(ManifestChecksTest, HugeRankCountIsRefusedAtOnce) {
  const std::string dir = Save(10);
  EditManifest(dir, [](CheckpointManifest* m) { m->set_num_ranks(2000000000); });
  ExpectRefusedByEveryReader(dir, "num_ranks 2000000000 is outside");
  EditManifest(dir, [](CheckpointManifest* m) { m->set_num_ranks(2); });
  ExpectRefusedByEveryReader(dir, "num_ranks 2 but 1 RNG states");
}

TEST_F(ManifestChecksTest, PieceInAnotherRanksFileOrOutsideTheDirectoryIsRefused) {
  const std::string dir = Save(10);
  EditManifest(dir, [](CheckpointManifest* m) {
    m->mutable_tensors(0)->mutable_pieces(0)->set_file("../../etc/passwd");
  });
  ExpectRefusedByEveryReader(dir, "in file \"../../etc/passwd\"");
}

TEST_F(ManifestChecksTest, GlobalShapeOverflowingInt64IsRefused) {
  const std::string dir = Save(10);
  EditManifest(dir, [](CheckpointManifest* m) {
    CheckpointTensor* t = m->mutable_tensors(0);
    t->clear_global_shape();
    for (int k = 0; k < 3; ++k) t->add_global_shape(int64_t{1} << 32);
  });
  ExpectRefusedByEveryReader(dir, "more elements than int64 holds");
}

TEST_F(ManifestChecksTest, TensorLargerThanItsFilesIsRefusedBeforeAllocation) {
  const std::string dir = Save(10);
  // b [4] declared as [2^40]: its piece stays valid, the whole is 4 TiB.
  EditManifest(dir, [](CheckpointManifest* m) {
    for (CheckpointTensor& t : *m->mutable_tensors()) {
      if (t.name() == "b") t.set_global_shape(0, int64_t{1} << 40);
    }
  });
  auto manifest = ReadCheckpointManifest(dir);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  for (const CheckpointTensor& t : manifest->tensors()) {
    if (t.name() != "b") continue;
    const absl::Status read = ReadGlobalTensor(dir, *manifest, t).status();
    EXPECT_EQ(ExitCodeFor(read), 4) << read;
    EXPECT_NE(read.message().find("declares global shape [1099511627776]"), std::string::npos)
        << read;
  }
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_FALSE(report->problems.empty());
  EXPECT_EQ(ExitCodeFor(ExportCheckpoint(dir, run_dir_ + "/out.h5", {})), 4);
}

TEST_F(ManifestChecksTest, RankFileShorterThanItsPiecesIsRefused) {
  const std::string dir = Save(10);
  fs::resize_file(dir + "/rank_00000.h5", 16);
  ExpectRefusedByEveryReader(dir, "rank_00000.h5: the manifest puts 76 bytes");
}

TEST_F(ManifestChecksTest, UnparseableStepDirectoriesAreListedAsSuchAndNeverLatest) {
  Save(10);
  const std::string root = CheckpointsRoot(run_dir_);
  for (const char* name : {"step_-0000010", "step_99999999999999999999999"}) {
    fs::create_directories(root + "/" + name);
    fs::copy_file(root + "/step_00000010/manifest.pb", root + "/" + name + "/manifest.pb");
  }
  fs::rename(root + "/latest", root + "/latest.old");  // FindLatest scans the names
  auto listings = ListCheckpoints(run_dir_);
  ASSERT_TRUE(listings.ok()) << listings.status();
  ASSERT_EQ(listings->size(), 3u);
  EXPECT_EQ((*listings)[0].name, "step_00000010");
  EXPECT_TRUE((*listings)[0].committed);
  EXPECT_TRUE((*listings)[0].latest);
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_TRUE((*listings)[i].unparseable) << (*listings)[i].name;
    EXPECT_FALSE((*listings)[i].committed) << (*listings)[i].name;
  }
  EXPECT_EQ(ExitCodeFor(ReadCheckpointManifest(root + "/step_-0000010").status()), 4);
}

}  // namespace
}  // namespace tessera
