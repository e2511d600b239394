// Save / commit / load of sharded checkpoints on one process, with oracle
// tensors (tests/runtime/checkpoint/test_tensors.h) cut into pieces several
// ways. Multi-rank commit runs under mpirun in tests/parallel/checkpoint.
#include "runtime/checkpoint/sharded_checkpoint.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "runtime/base/errors.h"
#include "runtime/checkpoint/checkpoint_files.h"
#include "runtime/hdf5/hdf5_util.h"
#include "tests/runtime/checkpoint/test_tensors.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using testing::OracleData;
using testing::OracleValue;

struct TensorDef {
  std::string name, kind;
  std::vector<int64_t> shape;
};

// Odd sizes, a vector, a scalar and a tensor with zero rows.
const std::vector<TensorDef>& Model() {
  static const std::vector<TensorDef> model = {
      {"blocks.0.attn.qkv.weight", "param", {5, 7}},
      {"blocks.0.attn.qkv.weight", "adam_m", {5, 7}},
      {"blocks.0.norm.bias", "param", {7}},
      {"blocks.0.norm.bias", "adam_v", {7}},
      {"scale", "param", {}},
      {"empty.rows", "param", {0, 3}},
  };
  return model;
}

enum class Cut { kWhole, kColumnHalves, kRowHalves, kZeroRuns, kColumnHalvesInRuns };

// The pieces that together hold `t` exactly once, cut as `cut` (tensors of
// rank < 2 fall back to runs for the 2-D cuts).
std::vector<PieceDesc> CutTensor(const TensorDef& t, Cut cut) {
  const int64_t n = NumElements(t.shape);
  auto whole = PieceDesc::Whole(t.name, t.kind, t.shape);
  auto runs = [&](const PieceDesc& box, std::vector<int64_t> cuts) {
    std::vector<PieceDesc> out;
    const int64_t m = box.BoxElements();
    cuts.insert(cuts.begin(), 0);
    cuts.push_back(m);
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      const int64_t b = std::min(cuts[i], m), e = std::min(cuts[i + 1], m);
      out.push_back(PieceDesc::Run(t.name, t.kind, t.shape, box.box_offset, box.box_shape, b,
                                   std::max(b, e)));
    }
    return out;
  };
  if (cut == Cut::kWhole) return {whole};
  if (t.shape.size() < 2 || cut == Cut::kZeroRuns) return runs(whole, {n / 3, n / 3 + 5});
  const int64_t rows = t.shape[0], cols = t.shape[1];
  if (cut == Cut::kRowHalves) {
    return {PieceDesc::Box(t.name, t.kind, t.shape, {0, 0}, {rows / 2, cols}),
            PieceDesc::Box(t.name, t.kind, t.shape, {rows / 2, 0}, {rows - rows / 2, cols})};
  }
  auto left = PieceDesc::Box(t.name, t.kind, t.shape, {0, 0}, {rows, cols / 2});
  auto right = PieceDesc::Box(t.name, t.kind, t.shape, {0, cols / 2}, {rows, cols - cols / 2});
  if (cut == Cut::kColumnHalves) return {left, right};
  std::vector<PieceDesc> out = runs(left, {4});
  for (const PieceDesc& p : runs(right, {1, 9})) out.push_back(p);
  return out;
}

CheckpointSnapshot Snapshot(int64_t step, Cut cut) {
  CheckpointSnapshot snapshot;
  snapshot.meta.step = step;
  snapshot.meta.samples_seen = step * 8;
  snapshot.meta.tokens_seen = step * 8 * 64;
  snapshot.meta.sampler_epoch = 2;
  snapshot.meta.sampler_position = 17;
  snapshot.meta.optimizer_step = step;
  snapshot.meta.mesh.set_world(1);
  snapshot.meta.mesh.set_zero_stage(1);
  snapshot.meta.run_config = "train { steps: 10 }";
  snapshot.meta.rng_state = "rng-bytes\0x";
  snapshot.meta.extras["note"] = "hello";
  for (const TensorDef& t : Model()) {
    for (const PieceDesc& p : CutTensor(t, cut)) snapshot.pieces.push_back({p, OracleData(p)});
  }
  return snapshot;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_dir_ = fs::temp_directory_path() /
               ("tessera_ckpt_test_" + std::to_string(::getpid()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(run_dir_);
    fs::create_directories(run_dir_);
  }
  void TearDown() override { fs::remove_all(run_dir_); }

  std::string Dir(int64_t step) const {
    return CheckpointsRoot(run_dir_) + "/" + CheckpointDirName(step);
  }
  absl::Status Save(int64_t step, Cut cut, int keep_last = 0) {
    return SaveCheckpoint(group_, run_dir_, Snapshot(step, cut), {keep_last});
  }
  std::string LatestFileContents() const {
    std::ifstream in(CheckpointsRoot(run_dir_) + "/latest");
    std::string s;
    std::getline(in, s);
    return s;
  }

  // Loads every tensor of the model cut as `cut` and checks each element.
  void ExpectLoadsAs(const std::string& dir, Cut cut) {
    auto manifest = ReadCheckpointManifest(dir);
    ASSERT_TRUE(manifest.ok()) << manifest.status();
    std::vector<PieceDesc> descs;
    for (const TensorDef& t : Model()) {
      for (const PieceDesc& p : CutTensor(t, cut)) descs.push_back(p);
    }
    std::vector<std::vector<float>> buffers;
    for (const PieceDesc& p : descs) buffers.emplace_back(p.size(), -1.0f);
    std::vector<LoadPiece> wanted;
    for (size_t i = 0; i < descs.size(); ++i) wanted.push_back({descs[i], buffers[i].data()});
    absl::Status status = LoadPieces(dir, *manifest, wanted, {.require_all_tensors = true});
    ASSERT_TRUE(status.ok()) << status;
    for (size_t i = 0; i < descs.size(); ++i) {
      EXPECT_EQ(buffers[i], OracleData(descs[i])) << descs[i].ToString();
    }
  }

  LocalHostGroup group_;
  std::string run_dir_;
};

TEST_F(CheckpointTest, RoundTripKeepsMetadataAndEveryValue) {
  ASSERT_TRUE(Save(12, Cut::kWhole).ok());
  EXPECT_EQ(LatestFileContents(), "step_00000012");
  auto latest = FindLatest(run_dir_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, Dir(12));
  EXPECT_TRUE(fs::exists(Dir(12) + "/rank_00000.h5"));
  EXPECT_TRUE(fs::exists(Dir(12) + "/manifest.textproto"));
  EXPECT_FALSE(fs::exists(Dir(12) + ".tmp"));
  auto manifest = ReadCheckpointManifest(*latest);
  ASSERT_TRUE(manifest.ok());
  EXPECT_EQ(manifest->format_version(), 1);
  EXPECT_EQ(manifest->step(), 12);
  EXPECT_EQ(manifest->samples_seen(), 96);
  EXPECT_EQ(manifest->tokens_seen(), 96 * 64);
  EXPECT_EQ(manifest->sampler_epoch(), 2);
  EXPECT_EQ(manifest->sampler_position(), 17);
  EXPECT_EQ(manifest->mesh().zero_stage(), 1);
  EXPECT_EQ(manifest->run_config(), "train { steps: 10 }");
  ASSERT_EQ(manifest->rng_state_size(), 1);
  EXPECT_EQ(manifest->rng_state(0), std::string("rng-bytes\0x"));
  EXPECT_EQ(manifest->extras().at("note"), "hello");
  EXPECT_EQ(manifest->tensors_size(), static_cast<int>(Model().size()));  // empty one included
  ExpectLoadsAs(*latest, Cut::kWhole);
}

TEST_F(CheckpointTest, EverySavedLayoutLoadsIntoEveryOtherLayout) {
  const Cut cuts[] = {Cut::kWhole, Cut::kColumnHalves, Cut::kRowHalves, Cut::kZeroRuns,
                      Cut::kColumnHalvesInRuns};
  int step = 1;
  for (Cut saved : cuts) {
    ASSERT_TRUE(Save(step, saved).ok());
    for (Cut loaded : cuts) {
      SCOPED_TRACE(::testing::Message() << "saved " << static_cast<int>(saved) << " loaded "
                                        << static_cast<int>(loaded));
      ExpectLoadsAs(Dir(step), loaded);
    }
    ++step;
  }
}

TEST_F(CheckpointTest, ReplicatedPiecesAreWrittenOnce) {
  CheckpointSnapshot snapshot = Snapshot(3, Cut::kWhole);
  snapshot.pieces.push_back(snapshot.pieces[0]);  // the same piece listed twice
  ASSERT_TRUE(SaveCheckpoint(group_, run_dir_, snapshot).ok());
  auto manifest = ReadCheckpointManifest(Dir(3));
  ASSERT_TRUE(manifest.ok());
  EXPECT_EQ(manifest->tensors(0).pieces_size(), 1);
}

// Flips one byte inside a dataset's stored data.
void CorruptDataset(const std::string& file_path, const std::string& dataset) {
  haddr_t offset;
  {
    H5Lock lock;
    hid_t file = H5Fopen(file_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t data = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
    offset = H5Dget_offset(data);
    H5Dclose(data);
    H5Fclose(file);
  }
  ASSERT_NE(offset, HADDR_UNDEF);
  std::fstream f(file_path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset) + 5);
  char byte;
  f.read(&byte, 1);
  byte ^= 0x10;
  f.seekp(static_cast<std::streamoff>(offset) + 5);
  f.write(&byte, 1);
}

TEST_F(CheckpointTest, CorruptPieceIsACheckpointErrorNamingTensorAndFile) {
  ASSERT_TRUE(Save(5, Cut::kColumnHalves).ok());
  auto manifest = ReadCheckpointManifest(Dir(5));
  ASSERT_TRUE(manifest.ok());
  const CheckpointTensor& tensor = manifest->tensors(0);
  CorruptDataset(Dir(5) + "/" + tensor.pieces(1).file(), tensor.pieces(1).dataset());
  std::vector<float> out(NumElements(Model()[1].shape));
  const PieceDesc whole = PieceDesc::Whole(
      tensor.name(), tensor.kind(), {tensor.global_shape().begin(), tensor.global_shape().end()});
  absl::Status status = LoadPieces(Dir(5), *manifest, {{whole, out.data()}});
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 4);
  EXPECT_NE(status.message().find("checksum mismatch"), std::string::npos) << status;
  EXPECT_NE(status.message().find(tensor.name()), std::string::npos) << status;
  EXPECT_NE(status.message().find("rank_00000.h5"), std::string::npos) << status;
}

TEST_F(CheckpointTest, MissingRankFileIsNamed) {
  ASSERT_TRUE(Save(5, Cut::kWhole).ok());
  fs::remove(Dir(5) + "/rank_00000.h5");
  auto manifest = ReadCheckpointManifest(Dir(5));
  ASSERT_TRUE(manifest.ok());
  std::vector<float> out(1);
  absl::Status status =
      LoadPieces(Dir(5), *manifest, {{PieceDesc::Whole("scale", "param", {}), out.data()}});
  EXPECT_EQ(ExitCodeFor(status), 4);
  EXPECT_NE(status.message().find("missing rank file"), std::string::npos) << status;
  EXPECT_NE(status.message().find("rank_00000.h5"), std::string::npos) << status;
}

TEST_F(CheckpointTest, NewerFormatVersionIsRefused) {
  ASSERT_TRUE(Save(5, Cut::kWhole).ok());
  auto manifest = ReadCheckpointManifest(Dir(5));
  ASSERT_TRUE(manifest.ok());
  manifest->set_format_version(2);
  ASSERT_TRUE(WriteFileDurably(Dir(5) + "/manifest.pb", manifest->SerializeAsString()).ok());
  auto reread = ReadCheckpointManifest(Dir(5));
  ASSERT_FALSE(reread.ok());
  EXPECT_EQ(ExitCodeFor(reread.status()), 4);
  EXPECT_NE(reread.status().message().find("version 2 is newer"), std::string::npos)
      << reread.status();
}

TEST_F(CheckpointTest, MismatchedModelListsMissingUnexpectedAndMismatchedTensors) {
  ASSERT_TRUE(Save(5, Cut::kWhole).ok());
  auto manifest = ReadCheckpointManifest(Dir(5));
  ASSERT_TRUE(manifest.ok());
  std::vector<float> a(35), b(8), c(1);
  std::vector<LoadPiece> wanted = {
      {PieceDesc::Whole("blocks.0.attn.qkv.weight", "param", {5, 7}), a.data()},
      {PieceDesc::Whole("blocks.0.norm.bias", "param", {8}), b.data()},  // wrong shape
      {PieceDesc::Whole("blocks.1.new", "param", {}), c.data()},         // not saved
  };
  absl::Status status = LoadPieces(Dir(5), *manifest, wanted, {.require_all_tensors = true});
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 4);
  const std::string message(status.message());
  EXPECT_NE(message.find("missing [blocks.1.new (param)]"), std::string::npos) << message;
  EXPECT_NE(message.find("blocks.0.norm.bias (param): checkpoint [7], model [8]"),
            std::string::npos)
      << message;
  // Saved params the model does not want (adam kinds are not asked for).
  EXPECT_NE(message.find("unexpected [empty.rows (param), scale (param)]"), std::string::npos)
      << message;
}

TEST_F(CheckpointTest, UncoveredElementsAreReported) {
  CheckpointSnapshot snapshot = Snapshot(4, Cut::kColumnHalves);
  snapshot.pieces.erase(snapshot.pieces.begin() + 1);  // right half of qkv.weight (param)
  ASSERT_TRUE(SaveCheckpoint(group_, run_dir_, snapshot).ok());
  auto manifest = ReadCheckpointManifest(Dir(4));
  ASSERT_TRUE(manifest.ok());
  std::vector<float> out(35);
  absl::Status status =
      LoadPieces(Dir(4), *manifest,
                 {{PieceDesc::Whole("blocks.0.attn.qkv.weight", "param", {5, 7}), out.data()}});
  EXPECT_EQ(ExitCodeFor(status), 4);
  EXPECT_NE(status.message().find("20 of 35 wanted elements are not stored"), std::string::npos)
      << status;
}

TEST_F(CheckpointTest, KeepLastPrunesOldestCommittedAndStaleTmpOnly) {
  fs::create_directories(Dir(2) + ".tmp");   // an interrupted older save
  fs::create_directories(Dir(99) + ".tmp");  // a newer one (not ours to remove)
  for (int step = 1; step <= 5; ++step) ASSERT_TRUE(Save(step, Cut::kWhole, 2).ok());
  for (int step = 1; step <= 3; ++step) EXPECT_FALSE(fs::exists(Dir(step))) << step;
  EXPECT_TRUE(IsCommittedCheckpoint(Dir(4)));
  EXPECT_TRUE(IsCommittedCheckpoint(Dir(5)));
  EXPECT_FALSE(fs::exists(Dir(2) + ".tmp"));
  EXPECT_TRUE(fs::exists(Dir(99) + ".tmp"));
  EXPECT_EQ(*FindLatest(run_dir_), Dir(5));
}

TEST_F(CheckpointTest, IncompleteDirectoriesAreNeverLoaded) {
  ASSERT_TRUE(Save(3, Cut::kWhole).ok());
  // A crash after the manifest was written but before the rename, and a
  // step directory with no manifest at all.
  fs::copy(Dir(3), Dir(7) + ".tmp");
  fs::create_directories(Dir(8));
  fs::copy(Dir(3) + "/rank_00000.h5", Dir(8) + "/rank_00000.h5");
  EXPECT_EQ(*FindLatest(run_dir_), Dir(3));
  EXPECT_EQ(ExitCodeFor(ReadCheckpointManifest(Dir(7) + ".tmp").status()), 4);
  EXPECT_EQ(ExitCodeFor(ReadCheckpointManifest(Dir(8)).status()), 4);
  // `latest` naming an incomplete directory falls back to the newest committed.
  ASSERT_TRUE(WriteFileDurably(CheckpointsRoot(run_dir_) + "/latest", "step_00000008\n").ok());
  EXPECT_EQ(*FindLatest(run_dir_), Dir(3));
}

TEST_F(CheckpointTest, NoCheckpointAndSavingAStepTwiceAreCheckpointErrors) {
  EXPECT_EQ(ExitCodeFor(FindLatest(run_dir_).status()), 4);
  ASSERT_TRUE(Save(3, Cut::kWhole).ok());
  absl::Status again = Save(3, Cut::kWhole);
  EXPECT_EQ(ExitCodeFor(again), 4);
  EXPECT_NE(again.message().find("already exists"), std::string::npos);
  ExpectLoadsAs(Dir(3), Cut::kRowHalves);  // untouched
}

TEST_F(CheckpointTest, MalformedPieceFailsWithoutCommitting) {
  CheckpointSnapshot snapshot = Snapshot(6, Cut::kWhole);
  snapshot.pieces[0].data.pop_back();
  absl::Status status = SaveCheckpoint(group_, run_dir_, snapshot);
  EXPECT_EQ(ExitCodeFor(status), 4);
  EXPECT_NE(status.message().find("blocks.0.attn.qkv.weight"), std::string::npos) << status;
  EXPECT_FALSE(fs::exists(Dir(6)));
  EXPECT_FALSE(fs::exists(CheckpointsRoot(run_dir_) + "/latest"));
}

// A write that fails part-way (here the file-size limit, as ENOSPC would)
// commits nothing and leaves `latest` on the previous checkpoint.
TEST_F(CheckpointTest, FailedWriteLeavesLatestUnchanged) {
  ASSERT_TRUE(Save(1, Cut::kWhole).ok());
  CheckpointSnapshot big = Snapshot(2, Cut::kWhole);
  PieceDesc large = PieceDesc::Whole("large", "param", {512, 512});  // 1 MiB
  big.pieces.push_back({large, std::vector<float>(large.size(), 1.0f)});

  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 256 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  absl::Status status = SaveCheckpoint(group_, run_dir_, big);
  setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);

  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 4);
  EXPECT_NE(status.message().find("rank_00000.h5"), std::string::npos) << status;
  EXPECT_FALSE(fs::exists(Dir(2)));
  EXPECT_FALSE(fs::exists(Dir(2) + ".tmp"));
  EXPECT_EQ(LatestFileContents(), "step_00000001");
  EXPECT_EQ(*FindLatest(run_dir_), Dir(1));
}

}  // namespace
}  // namespace tessera
