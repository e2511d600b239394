// The checkpoint commit protocol on several ranks (CommunicatorHostGroup over
// MPI): replicated pieces are written once, by holders spread over the ranks;
// each rank contributes its RNG state; any layout loads back into another
// with oracle values; one failing rank means nobody commits.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "parallel/comm/host_group_adapter.h"
#include "parallel/comm/mpi_communicator.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "tests/parallel/comm/mpi_test_main.h"
#include "tests/runtime/checkpoint/test_tensors.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using parallel::testing::MpiForTests;
using testing::OracleData;

const std::vector<int64_t> kWeight = {6, 9};
const std::vector<int64_t> kBias = {9};

class CommitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto world = MpiForTests()->CreateWorld(absl::Seconds(60));
    TESSERA_CHECK(world.ok());
    world_ = std::move(*world);
    group_ = std::make_unique<parallel::CommunicatorHostGroup>(world_.get());
    // One directory for the job, named by rank 0.
    std::string dir = (fs::temp_directory_path() /
                       ("tessera_commit_" + std::to_string(::getpid()) + "_" +
                        ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                          .string();
    TESSERA_CHECK(group_->Broadcast(&dir, 0).ok());
    run_dir_ = dir;
    if (group_->rank() == 0) fs::create_directories(run_dir_);
    TESSERA_CHECK(group_->Barrier().ok());
  }
  void TearDown() override {
    TESSERA_CHECK(group_->Barrier().ok());
    if (group_->rank() == 0) fs::remove_all(run_dir_);
  }

  // Rank r: column half r % 2 of w (replicated over r / 2), the whole bias
  // (replicated everywhere), and an uneven ZeRO run of w's adam_m.
  CheckpointSnapshot Snapshot(int64_t step) const {
    const int rank = group_->rank(), size = group_->size();
    CheckpointSnapshot s;
    s.meta.step = step;
    s.meta.mesh.set_world(size);
    s.meta.rng_state = "rng of rank " + std::to_string(rank);
    PieceDesc w = PieceDesc::Whole("w", "param", kWeight);
    if (size > 1) {
      const int64_t half = kWeight[1] / 2;
      w = rank % 2 == 0 ? PieceDesc::Box("w", "param", kWeight, {0, 0}, {6, half})
                        : PieceDesc::Box("w", "param", kWeight, {0, half}, {6, 9 - half});
    }
    s.pieces.push_back({w, OracleData(w)});
    PieceDesc bias = PieceDesc::Whole("bias", "param", kBias);
    s.pieces.push_back({bias, OracleData(bias)});
    const int64_t n = NumElements(kWeight);
    auto cut = [&](int r) { return r == size ? n : (n * r) / size + (r % 2); };  // uneven
    PieceDesc m = PieceDesc::Run("w", "adam_m", kWeight, {0, 0}, kWeight, cut(rank), cut(rank + 1));
    s.pieces.push_back({m, OracleData(m)});
    return s;
  }

  std::unique_ptr<parallel::MpiCommunicator> world_;
  std::unique_ptr<parallel::CommunicatorHostGroup> group_;
  std::string run_dir_;
};

TEST_F(CommitTest, ReplicatedPiecesAreWrittenOnceAndEveryLayoutLoadsBack) {
  const int size = group_->size();
  absl::Status saved = SaveCheckpoint(*group_, run_dir_, Snapshot(10));
  ASSERT_TRUE(saved.ok()) << saved;
  auto latest = FindLatest(run_dir_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  auto manifest = ReadCheckpointManifest(*latest);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->num_ranks(), size);
  ASSERT_EQ(manifest->rng_state_size(), size);
  for (int r = 0; r < size; ++r)
    EXPECT_EQ(manifest->rng_state(r), "rng of rank " + std::to_string(r));

  std::set<int> writers;
  for (const CheckpointTensor& t : manifest->tensors()) {
    if (t.name() == "bias") {
      ASSERT_EQ(t.pieces_size(), 1);  // held by all, written once
      EXPECT_EQ(t.pieces(0).holders_size(), size);
      writers.insert(t.pieces(0).rank());
    } else if (t.kind() == "param") {
      ASSERT_EQ(t.pieces_size(), size > 1 ? 2 : 1);
      for (const CheckpointPiece& p : t.pieces()) {
        EXPECT_EQ(p.holders_size(), size > 1 ? size / 2 : 1);
        writers.insert(p.rank());
      }
    } else {
      EXPECT_EQ(t.pieces_size(), size);  // one ZeRO run per rank
    }
  }
  // The three replicated pieces are spread over min(size, 3) writers.
  EXPECT_EQ(static_cast<int>(writers.size()), std::min(size, 3));
  for (int r = 0; r < size; ++r) {
    EXPECT_TRUE(fs::exists(*latest + "/" + RankFileName(r))) << r;
  }

  // Load as row blocks of w (rank r: rows [r*6/size, (r+1)*6/size)), the
  // whole adam_m and the whole bias.
  const int rank = group_->rank();
  const int64_t r0 = 6 * rank / size, r1 = 6 * (rank + 1) / size;
  std::vector<PieceDesc> descs = {PieceDesc::Box("w", "param", kWeight, {r0, 0}, {r1 - r0, 9}),
                                  PieceDesc::Whole("w", "adam_m", kWeight),
                                  PieceDesc::Whole("bias", "param", kBias)};
  std::vector<std::vector<float>> buffers;
  std::vector<LoadPiece> wanted;
  for (const PieceDesc& d : descs) buffers.emplace_back(d.size(), -1.0f);
  for (size_t i = 0; i < descs.size(); ++i) wanted.push_back({descs[i], buffers[i].data()});
  absl::Status loaded = LoadPieces(*latest, *manifest, wanted);
  ASSERT_TRUE(loaded.ok()) << loaded;
  for (size_t i = 0; i < descs.size(); ++i) EXPECT_EQ(buffers[i], OracleData(descs[i])) << i;
}

TEST_F(CommitTest, OneFailingRankMeansNoRankCommits) {
  ASSERT_TRUE(SaveCheckpoint(*group_, run_dir_, Snapshot(1)).ok());
  CheckpointSnapshot snapshot = Snapshot(2);
  if (group_->rank() == group_->size() - 1) snapshot.pieces[0].data.push_back(0.0f);  // malformed
  absl::Status status = SaveCheckpoint(*group_, run_dir_, snapshot);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 4);
  EXPECT_NE(status.message().find("rank " + std::to_string(group_->size() - 1)), std::string::npos)
      << status;
  ASSERT_TRUE(group_->Barrier().ok());
  EXPECT_FALSE(fs::exists(CheckpointsRoot(run_dir_) + "/" + CheckpointDirName(2)));
  auto latest = FindLatest(run_dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, CheckpointsRoot(run_dir_) + "/" + CheckpointDirName(1));
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
