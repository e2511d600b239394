// The watchdog: records published and read across ranks, and the timeout
// messages of a collective a rank skipped and of a receive whose sender was
// late. The killed- and stalled-rank cases end the job, so they only run
// when killed_rank.sh asks for them through the environment.
#include "parallel/comm/watchdog.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

std::vector<int> AllRanks() {
  std::vector<int> ranks(static_cast<size_t>(MpiForTests()->world_size()));
  std::iota(ranks.begin(), ranks.end(), 0);
  return ranks;
}

std::unique_ptr<MpiCommunicator> WorldNamed(const std::string& name, absl::Duration timeout) {
  auto comm =
      MpiCommunicator::Create(MPI_COMM_WORLD, AllRanks(), name, timeout, MpiForTests()->watchdog());
  TESSERA_CHECK(comm.ok() && *comm != nullptr);
  return std::move(*comm);
}

// The "ranks that never arrived" list of a timeout message, up to the directory note.
std::string LateList(absl::string_view message) {
  constexpr absl::string_view kIntro = "ranks that never arrived (world ranks): ";
  const size_t begin = message.find(kIntro);
  if (begin == absl::string_view::npos) return "";
  const size_t end = message.find(" [watchdog records in ", begin);
  return std::string(message.substr(begin + kIntro.size(), end - begin - kIntro.size()));
}

TEST(WatchdogRecord, ParsesWhatThePublisherWritesAndRejectsOtherText) {
  const PeerRecord record = ParsePeerRecord(
      "tessera-watchdog 1\npid 812\nhost node7\nheartbeat_unix_ms 1700000000123\n"
      "group dp@00ff#0 41\ngroup tp@0a0b#1 3\n");
  ASSERT_TRUE(record.found);
  EXPECT_EQ(record.pid, 812);
  EXPECT_EQ(record.host, "node7");
  EXPECT_EQ(record.heartbeat_unix_ms, 1700000000123);
  EXPECT_EQ(record.last_entered.at("dp@00ff#0"), 41);
  EXPECT_EQ(record.last_entered.at("tp@0a0b#1"), 3);
  EXPECT_FALSE(ParsePeerRecord("").found);
  EXPECT_FALSE(ParsePeerRecord("something else\npid 1\n").found);
  EXPECT_FALSE(ParsePeerRecord("tessera-watchdog 1\ngroup dp@1\n").found);
  EXPECT_FALSE(ParsePeerRecord("tessera-watchdog 1\npid x\n").found);
}

// A pid that belonged to a process which has exited.
int DeadPid() {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  return child;
}

void WriteRecord(const std::filesystem::path& dir, int rank, int64_t pid, const std::string& host,
                 absl::Time heartbeat) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / absl::StrCat("rank-", rank))
      << "tessera-watchdog 1\npid " << pid << "\nhost " << host << "\nheartbeat_unix_ms "
      << absl::ToUnixMillis(heartbeat) << "\ngroup world@00#0 7\n";
}

// What an aborted job leaves behind is removed by the next job; directories
// of live jobs (here or on another node) and foreign files are not.
TEST(Watchdog, AbandonedDirectoriesOfAbortedJobsAreRemoved) {
  if (MpiForTests()->world_rank() != 0) GTEST_SKIP() << "one rank is enough";
  const std::filesystem::path base =
      std::filesystem::temp_directory_path() / absl::StrCat("watchdog-sweep-", getpid());
  std::filesystem::remove_all(base);
  const absl::Time now = absl::Now();
  const int dead = DeadPid();
  const int alive = getpid();
  // Aborted here: every rank's process is gone (heartbeats still recent).
  WriteRecord(base / "tessera-watchdog-1-a", 0, dead, "thishost", now);
  WriteRecord(base / "tessera-watchdog-1-a", 1, dead, "thishost", now);
  // Aborted on another node: heartbeats stopped an hour ago.
  WriteRecord(base / "tessera-watchdog-2-b", 0, 1234, "othernode", now - absl::Hours(1));
  // Live: one rank alive here; another node's fresh heartbeat.
  WriteRecord(base / "tessera-watchdog-3-c", 0, dead, "thishost", now);
  WriteRecord(base / "tessera-watchdog-3-c", 1, alive, "thishost", now);
  WriteRecord(base / "tessera-watchdog-4-d", 0, 1234, "othernode", now);
  // Not a watchdog directory at all.
  WriteRecord(base / "something-else", 0, dead, "thishost", now);

  EXPECT_EQ(RemoveAbandonedWatchdogDirectories(base.string(), "thishost"), 2);
  EXPECT_FALSE(std::filesystem::exists(base / "tessera-watchdog-1-a"));
  EXPECT_FALSE(std::filesystem::exists(base / "tessera-watchdog-2-b"));
  EXPECT_TRUE(std::filesystem::exists(base / "tessera-watchdog-3-c"));
  EXPECT_TRUE(std::filesystem::exists(base / "tessera-watchdog-4-d"));
  EXPECT_TRUE(std::filesystem::exists(base / "something-else"));
  std::filesystem::remove_all(base);
}

TEST(Watchdog, EveryRankReadsEveryPeersLastSequence) {
  Watchdog& watchdog = *MpiForTests()->watchdog();
  const int me = MpiForTests()->world_rank();
  auto group = watchdog.Register("probe", AllRanks());
  for (int i = 0; i < 3 + me; ++i) group->Enter();
  ASSERT_TRUE(watchdog.PublishNow().ok());
  MPI_Barrier(MPI_COMM_WORLD);
  for (int rank : AllRanks()) {
    const PeerRecord record = watchdog.ReadRecord(rank);
    ASSERT_TRUE(record.found) << "rank " << rank << " in " << watchdog.dir();
    EXPECT_GT(record.pid, 0);
    ASSERT_EQ(record.last_entered.count(group->key()), 1u) << group->key();
    EXPECT_EQ(record.last_entered.at(group->key()), 3 + rank);
  }
  MPI_Barrier(MPI_COMM_WORLD);  // nobody re-publishes before everyone has read
}

// Rank n-1 skips the group's second all-reduce of `count` floats until the
// others' Wait has timed out; the message names it, and the same Work then
// completes once it arrives.
void ExpectSkippedAllReduceTimesOutNamingTheLateRank(size_t count) {
  const int me = MpiForTests()->world_rank(), n = MpiForTests()->world_size();
  // Long enough that every rank's watchdog publisher (every 20 ms) has run
  // even on a loaded, oversubscribed CI machine.
  auto comm = WorldNamed("skip-test", absl::Seconds(2));
  MPI_Comm control;  // tells the late rank when the others have seen the timeout
  ASSERT_EQ(MPI_Comm_dup(MPI_COMM_WORLD, &control), MPI_SUCCESS);
  const int late = n - 1;
  std::vector<float> data(count, 1.0f);
  auto first = comm->AllReduce(data.data(), count, DType::kF32, ReduceOp::kSum);  // #1, everyone
  ASSERT_TRUE(first.ok() && (*first)->Wait(absl::Seconds(30)).ok());

  for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>(me * 10 + i % 7);
  if (me != late) {
    auto work = comm->AllReduce(data.data(), count, DType::kF32, ReduceOp::kSum);  // #2
    ASSERT_TRUE(work.ok());
    const absl::Status status = (*work)->Wait(comm->timeout());
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(ExitCodeFor(status), 5);
    EXPECT_TRUE(absl::StrContains(
        status.message(),
        absl::StrFormat("watchdog: AllReduce(sum) of %d x f32 (%d bytes) on group 'skip-test' (%d "
                        "ranks), sequence #2 did not complete within 2s",
                        count, 4 * count, n)))
        << status;
    EXPECT_EQ(LateList(status.message()), absl::StrCat(late, " (last recorded entering #1)"))
        << status;
    int token = 1;
    ASSERT_EQ(MPI_Send(&token, 1, MPI_INT, late, 0, control), MPI_SUCCESS);
    // The late rank joins; the same Work now completes.
    const absl::Status second = (*work)->Wait(absl::Seconds(30));
    ASSERT_TRUE(second.ok()) << second;
  } else {
    for (int q = 0; q < n; ++q) {
      int token = 0;
      if (q != late) MPI_Recv(&token, 1, MPI_INT, q, 0, control, MPI_STATUS_IGNORE);
    }
    auto work = comm->AllReduce(data.data(), count, DType::kF32, ReduceOp::kSum);
    ASSERT_TRUE(work.ok() && (*work)->Wait(absl::Seconds(30)).ok());
  }
  for (size_t i = 0; i < count; ++i) {
    double want = 0;
    for (int r = 0; r < n; ++r) want += r * 10 + static_cast<double>(i % 7);
    ASSERT_EQ(data[i], want) << "element " << i;
  }
  MPI_Comm_free(&control);
}

TEST(Watchdog, SkippedCollectiveTimesOutNamingTheRankThatNeverArrived) {
  if (MpiForTests()->world_size() < 2) GTEST_SKIP() << "needs a second rank to skip";
  ExpectSkippedAllReduceTimesOutNamingTheLateRank(4);
}

// The same for an all-reduce large enough to run on the collective thread.
TEST(Watchdog, SkippedThreadedAllReduceTimesOutNamingTheRankThatNeverArrived) {
  if (MpiForTests()->world_size() < 2) GTEST_SKIP() << "needs a second rank to skip";
  ExpectSkippedAllReduceTimesOutNamingTheLateRank(kThreadedAllReduceBytes / sizeof(float));
}

TEST(Watchdog, LateSendMakesTheReceiveTimeOutNamingThePeer) {
  const int me = MpiForTests()->world_rank(), n = MpiForTests()->world_size();
  if (n < 2) GTEST_SKIP() << "needs a peer";
  auto comm = WorldNamed("p2p-test", absl::Milliseconds(200));
  MPI_Comm control;
  ASSERT_EQ(MPI_Comm_dup(MPI_COMM_WORLD, &control), MPI_SUCCESS);
  std::vector<float> data(3, static_cast<float>(me));
  int token = 1;
  if (me == 0) {
    auto work = comm->Recv(data.data(), 3, DType::kF32, /*peer=*/1, /*tag=*/5);
    ASSERT_TRUE(work.ok());
    const absl::Status status = (*work)->Wait(comm->timeout());
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(ExitCodeFor(status), 5);
    EXPECT_TRUE(absl::StrContains(status.message(),
                                  "Recv of 3 x f32 (12 bytes) from group rank 1 (world rank 1), "
                                  "tag 5 on group 'p2p-test'"))
        << status;
    EXPECT_TRUE(absl::StrContains(status.message(),
                                  "peer world rank 1: recorded no collective of this group"))
        << status;
    ASSERT_EQ(MPI_Send(&token, 1, MPI_INT, 1, 0, control), MPI_SUCCESS);
    ASSERT_TRUE((*work)->Wait(absl::Seconds(30)).ok());
    EXPECT_EQ(data, std::vector<float>(3, 1.0f));
  } else if (me == 1) {
    MPI_Recv(&token, 1, MPI_INT, 0, 0, control, MPI_STATUS_IGNORE);
    auto work = comm->Send(data.data(), 3, DType::kF32, /*peer=*/0, /*tag=*/5);
    ASSERT_TRUE(work.ok() && (*work)->Wait(absl::Seconds(30)).ok());
  }
  MPI_Comm_free(&control);
}

// Driven by killed_rank.sh: TESSERA_COMM_TEST_KILL_RANK=R makes world rank R
// raise SIGKILL before its 21st all-reduce; TESSERA_COMM_TEST_HANG_RANK=R
// makes it sleep there instead. The others must end the job through AbortJob
// within TESSERA_COMM_TEST_TIMEOUT_S (default 2).
TEST(FaultInjection, KilledOrStalledRankEndsTheJobWithTheWatchdogMessage) {
  const char* kill_rank = std::getenv("TESSERA_COMM_TEST_KILL_RANK");
  const char* hang_rank = std::getenv("TESSERA_COMM_TEST_HANG_RANK");
  if (kill_rank == nullptr && hang_rank == nullptr) {
    GTEST_SKIP() << "run by tests/parallel/comm/killed_rank.sh";
  }
  int victim = -1;
  ASSERT_TRUE(absl::SimpleAtoi(kill_rank ? kill_rank : hang_rank, &victim));
  double timeout_s = 2;
  if (const char* text = std::getenv("TESSERA_COMM_TEST_TIMEOUT_S")) {
    ASSERT_TRUE(absl::SimpleAtod(text, &timeout_s));
  }
  size_t elements = 1024;  // TESSERA_COMM_TEST_ELEMENTS: e.g. one for the collective thread
  if (const char* text = std::getenv("TESSERA_COMM_TEST_ELEMENTS")) {
    ASSERT_TRUE(absl::SimpleAtoi(text, &elements));
  }
  auto comm = WorldNamed("world", absl::Seconds(timeout_s));
  std::vector<float> data(elements, 1.0f);
  for (int step = 0; step < 1000; ++step) {
    if (MpiForTests()->world_rank() == victim && step == 20) {
      if (kill_rank != nullptr) raise(SIGKILL);
      absl::SleepFor(absl::Seconds(600));
    }
    const absl::Status status =
        comm->Complete(comm->AllReduce(data.data(), data.size(), DType::kF32, ReduceOp::kMax));
    if (!status.ok()) AbortJob(status);
  }
  FAIL() << "rank " << victim << " was meant to fail at step 20";
}

}  // namespace
}  // namespace tessera::parallel
