// The functions behind `tessera ckpt`, against oracle tensors and naive
// double-precision statistics.
#include "runtime/checkpoint/checkpoint_tools.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "runtime/base/errors.h"
#include "runtime/checkpoint/checkpoint_files.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/hdf5/hdf5_util.h"
#include "runtime/nn/parameter.h"
#include "tests/runtime/checkpoint/test_tensors.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using testing::OracleData;
using testing::OracleValue;

class ToolsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_dir_ = (fs::temp_directory_path() /
                ("tessera_ckpt_tools_" + std::to_string(::getpid()) + "_" +
                 ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                   .string();
    fs::remove_all(run_dir_);
    fs::create_directories(run_dir_);
  }
  void TearDown() override { fs::remove_all(run_dir_); }

  // w [3, 5] saved as two column halves; its adam_m as two ZeRO runs;
  // b [4] whole. `scale` multiplies w's values (for diff).
  std::string Save(int64_t step, float scale = 1.0f) {
    CheckpointSnapshot s;
    s.meta.step = step;
    auto add = [&](const PieceDesc& d, float factor) {
      std::vector<float> data = OracleData(d);
      for (float& v : data) v *= factor;
      s.pieces.push_back({d, data});
    };
    add(PieceDesc::Box("w", "param", {3, 5}, {0, 0}, {3, 2}), scale);
    add(PieceDesc::Box("w", "param", {3, 5}, {0, 2}, {3, 3}), scale);
    add(PieceDesc::Run("w", "adam_m", {3, 5}, {0, 0}, {3, 5}, 0, 7), 1.0f);
    add(PieceDesc::Run("w", "adam_m", {3, 5}, {0, 0}, {3, 5}, 7, 15), 1.0f);
    add(PieceDesc::Whole("b", "param", {4}), 1.0f);
    LocalHostGroup group;
    EXPECT_TRUE(SaveCheckpoint(group, run_dir_, s).ok());
    return CheckpointsRoot(run_dir_) + "/" + CheckpointDirName(step);
  }

  std::string run_dir_;
};

TEST_F(ToolsTest, ListShowsCommittedIncompleteAndLatest) {
  Save(1);
  const std::string two = Save(2);
  fs::create_directories(CheckpointsRoot(run_dir_) + "/step_00000003.tmp");
  auto listings = ListCheckpoints(run_dir_);
  ASSERT_TRUE(listings.ok()) << listings.status();
  ASSERT_EQ(listings->size(), 3u);
  EXPECT_TRUE((*listings)[0].committed);
  EXPECT_FALSE((*listings)[0].latest);
  EXPECT_TRUE((*listings)[1].latest);
  EXPECT_EQ((*listings)[2].name, "step_00000003.tmp");
  EXPECT_FALSE((*listings)[2].committed);
  EXPECT_GT((*listings)[1].bytes, 15 * 4);
  EXPECT_EQ(*ResolveCheckpoint(run_dir_), two);
  EXPECT_EQ(*ResolveCheckpoint(two), two);
  EXPECT_EQ(ExitCodeFor(ResolveCheckpoint(run_dir_ + "/nothing").status()), 4);
}

TEST_F(ToolsTest, GlobalTensorAssemblesAllPiecesInOrder) {
  const std::string dir = Save(1);
  auto manifest = ReadCheckpointManifest(dir);
  ASSERT_TRUE(manifest.ok());
  for (const CheckpointTensor& t : manifest->tensors()) {
    auto values = ReadGlobalTensor(dir, *manifest, t);
    ASSERT_TRUE(values.ok()) << values.status();
    for (size_t i = 0; i < values->size(); ++i) {
      EXPECT_EQ((*values)[i], OracleValue(t.name(), t.kind(), i)) << t.name() << " " << i;
    }
  }
}

TEST_F(ToolsTest, StatsMatchNaiveDoubleReference) {
  const std::vector<float> values = {1.5f, -2.0f, NAN, 4.0f, INFINITY, 0.25f, -INFINITY};
  const TensorStats s = ComputeTensorStats(values);
  const double finite[] = {1.5, -2.0, 4.0, 0.25};
  double mean = (1.5 - 2.0 + 4.0 + 0.25) / 4, var = 0, sq = 0;
  for (double v : finite) {
    var += (v - mean) * (v - mean) / 4;
    sq += v * v;
  }
  EXPECT_EQ(s.count, 7);
  EXPECT_EQ(s.nan, 1);
  EXPECT_EQ(s.inf, 2);
  EXPECT_EQ(s.min, -2.0);
  EXPECT_EQ(s.max, 4.0);
  EXPECT_NEAR(s.mean, mean, 1e-12);
  EXPECT_NEAR(s.std, std::sqrt(var), 1e-12);
  EXPECT_NEAR(s.l2, std::sqrt(sq), 1e-12);
  const TensorStats empty = ComputeTensorStats({});
  EXPECT_EQ(empty.count, 0);
  EXPECT_EQ(empty.l2, 0);
}

TEST_F(ToolsTest, DiffReportsMaxAbsoluteAndRelativeDifference) {
  const TensorDiff d = DiffTensors({1.0f, 2.0f, 0.0f, -4.0f}, {1.0f, 2.5f, 0.0f, -3.0f});
  EXPECT_DOUBLE_EQ(d.max_abs, 1.0);
  EXPECT_DOUBLE_EQ(d.max_rel, 0.25);  // 1 / 4 beats 0.5 / 2.5
  EXPECT_EQ(DiffTensors({NAN}, {NAN}).max_abs, 0);
  EXPECT_TRUE(std::isinf(DiffTensors({NAN}, {1.0f}).max_abs));
}

TEST_F(ToolsTest, VerifyAcceptsAnIntactCheckpoint) {
  const std::string dir = Save(1);
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->problems.empty()) << report->problems.front();
  EXPECT_EQ(report->tensors, 3);
  EXPECT_EQ(report->pieces, 5);
  EXPECT_EQ(report->bytes, (15 + 15 + 4) * 4);
}

TEST_F(ToolsTest, VerifyFindsGapsOverlapsMissingFilesAndBadChecksums) {
  const std::string dir = Save(1);
  auto manifest = ReadCheckpointManifest(dir);
  ASSERT_TRUE(manifest.ok());
  // Edit the manifest: adam_m's second run starts 2 early (overlap), w's
  // right half loses a column (gap), b's checksum is wrong.
  for (CheckpointTensor& t : *manifest->mutable_tensors()) {
    if (t.kind() == "adam_m") t.mutable_pieces(1)->set_run_begin(5);
    if (t.name() == "w" && t.kind() == "param") {
      t.mutable_pieces(1)->set_box_shape(1, 2);
      t.mutable_pieces(1)->set_run_end(6);
    }
    if (t.name() == "b") t.mutable_pieces(0)->set_crc32c(t.pieces(0).crc32c() ^ 1);
  }
  ASSERT_TRUE(WriteFileDurably(dir + "/manifest.pb", manifest->SerializeAsString()).ok());
  auto report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok());
  auto has = [&](const std::string& needle) {
    for (const auto& p : report->problems) {
      if (p.find(needle) != std::string::npos) return true;
    }
    return false;
  };
  EXPECT_TRUE(has("w (adam_m): 2 elements are in more than one piece"));
  EXPECT_TRUE(has("w (param): 3 of 15 elements are in no piece"));
  EXPECT_TRUE(has("checksum mismatch in tensor b (param)"));
  fs::remove(dir + "/rank_00000.h5");
  report = VerifyCheckpoint(dir);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(has("missing rank file"));
}

TEST_F(ToolsTest, WeightsOnlyExportLoadsThroughTheWeightsFileReader) {
  const std::string dir = Save(4);
  const std::string out = run_dir_ + "/weights.h5";
  ASSERT_TRUE(ExportCheckpoint(dir, out, {.bf16 = false, .weights_only = true}).ok());
  ParameterStore store;
  store.Register("w", Shape({3, 5}), ParamInit::Zeros(), true);
  store.Register("b", Shape({4}), ParamInit::Zeros(), false);
  store.Finalize(0);
  absl::Status loaded = LoadWeights(out, store);
  ASSERT_TRUE(loaded.ok()) << loaded;
  for (const ParamInfo& info : store.infos()) {
    const float* values = store.values().data<float>() + info.offset;
    for (int64_t i = 0; i < info.global_shape.numel(); ++i) {
      EXPECT_EQ(values[i], OracleValue(info.name, "param", i)) << info.name;
    }
  }
}

TEST_F(ToolsTest, Bf16ExportStoresRoundedBitsWithDtypeAttribute) {
  EXPECT_EQ(FloatToBfloat16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBfloat16(-2.0f), 0xC000);
  // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0);
  // 1 + 3 * 2^-8 is halfway between 1.0078125 and 1.015625: ties to even.
  EXPECT_EQ(FloatToBfloat16(1.0f + 1.0f / 256), 0x3F80);
  EXPECT_EQ(FloatToBfloat16(1.0f + 3.0f / 256), 0x3F82);
  EXPECT_EQ(FloatToBfloat16(1.0f + 1.5f / 256), 0x3F81);
  const uint32_t nan_bits = uint32_t{FloatToBfloat16(NAN)} << 16;
  float nan_back;
  std::memcpy(&nan_back, &nan_bits, sizeof(nan_back));
  EXPECT_TRUE(std::isnan(nan_back));

  const std::string dir = Save(4);
  const std::string out = run_dir_ + "/all_bf16.h5";
  ASSERT_TRUE(ExportCheckpoint(dir, out, {.bf16 = true, .weights_only = false}).ok());
  H5Lock lock;
  auto file = h5::OpenFileReadOnly(out);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(*h5::ReadStringAttribute(file->get(), "format"), "tessera.checkpoint_export");
  hid_t dataset = H5Dopen2(file->get(), "adam_m/w", H5P_DEFAULT);
  ASSERT_GE(dataset, 0);
  EXPECT_EQ(*h5::ReadStringAttribute(dataset, "dtype"), "bfloat16");
  std::vector<uint16_t> bits(15);
  ASSERT_GE(H5Dread(dataset, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, bits.data()), 0);
  H5Dclose(dataset);
  for (size_t i = 0; i < bits.size(); ++i) {
    EXPECT_EQ(bits[i], FloatToBfloat16(OracleValue("w", "adam_m", i))) << i;
  }
}

}  // namespace
}  // namespace tessera
