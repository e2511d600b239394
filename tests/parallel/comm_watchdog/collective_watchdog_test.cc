// CollectiveWatchdog (parallel/comm/watchdog_thread.h) on the CPU: a fake
// device communicator whose collectives are finished on the "device"
// (Work::StreamWait, the host does not wait) and, in most tests, never
// complete — what a hung NCCL collective looks like to the host. The
// watchdog must abort the group and end the job with exit 5 naming the
// collective, the group and the rank; the NCCL communicator plugs its event
// queries and ncclCommAbort into the same two interfaces.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/watchdog_thread.h"
#include "runtime/base/errors.h"

namespace tessera::parallel {
namespace {

// The device side of one collective: done when `*complete` is set (never,
// by default), failed when `*failure` is not OK.
struct DeviceState {
  std::atomic<bool> complete{false};
  absl::Mutex mu;
  absl::Status failure ABSL_GUARDED_BY(mu);
};

class FakeDeviceWork final : public DeviceWork {
 public:
  explicit FakeDeviceWork(std::shared_ptr<DeviceState> state) : state_(std::move(state)) {}
  absl::StatusOr<bool> Poll() override {
    absl::MutexLock lock(&state_->mu);
    if (!state_->failure.ok()) return state_->failure;
    return state_->complete.load();
  }

 private:
  std::shared_ptr<DeviceState> state_;
};

class FakeGroup final : public WatchedGroup {
 public:
  FakeGroup(std::string name, int world_rank) : name_(std::move(name)), world_rank_(world_rank) {}
  const std::string& group_name() const override { return name_; }
  int world_rank() const override { return world_rank_; }
  absl::Status AbortGroup() override {
    ++aborts;
    aborted = true;
    return absl::OkStatus();
  }
  std::string DescribeOthers(int64_t seq, int /*peer*/) const override {
    return absl::StrCat("ranks that never arrived (world ranks): 1 (last recorded entering #",
                        seq - 1, ")");
  }
  std::atomic<int> aborts{0};
  std::atomic<bool> aborted{false};

 private:
  std::string name_;
  int world_rank_;
};

// Issues AllReduce; StreamWait hands the operation to the watchdog, as
// NcclWork::StreamWait does, and returns at once.
class FakeDeviceCommunicator final : public Communicator {
 public:
  FakeDeviceCommunicator(CollectiveWatchdog& watchdog, std::string name, int world_rank,
                         absl::Duration timeout)
      : watchdog_(watchdog), group_(std::move(name), world_rank), timeout_(timeout) {
    world_ranks_ = {world_rank - 1, world_rank};
  }
  ~FakeDeviceCommunicator() override { watchdog_.Forget(group_); }

  int rank() const override { return 1; }
  int size() const override { return 2; }
  const std::string& name() const override { return group_.group_name(); }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  absl::Duration timeout() const override { return timeout_; }

  absl::StatusOr<std::unique_ptr<Work>> AllReduce(void*, size_t count, DType, ReduceOp) override {
    // As NCCL's Prepare: a group the watchdog aborted takes no more work.
    if (absl::Status status = watchdog_.Check(group_); !status.ok()) return status;
    if (group_.aborted) return CommunicationError("the group was aborted");
    next_state = std::make_shared<DeviceState>();
    const std::string what =
        absl::StrCat("AllReduce(sum) of ", count, " x f32 (", count * 4, " bytes) on group '",
                     group_.group_name(), "' (2 ranks), sequence #", ++seq_);
    return std::unique_ptr<Work>(new FakeWork(*this, what, seq_, next_state));
  }
  absl::StatusOr<std::unique_ptr<Work>> ReduceScatter(const void*, void*, size_t, DType,
                                                      ReduceOp) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::unique_ptr<Work>> AllGather(const void*, void*, size_t, DType) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::unique_ptr<Work>> AllToAll(const void*, void*, size_t, DType) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::unique_ptr<Work>> AllToAllV(const void*, const std::vector<size_t>&, void*,
                                                  const std::vector<size_t>&, DType) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::unique_ptr<Work>> Broadcast(void*, size_t, DType, int) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::unique_ptr<Work>> Send(const void*, size_t, DType, int, int) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::unique_ptr<Work>> Recv(void*, size_t, DType, int, int) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::unique_ptr<Work>> Barrier() override {
    return absl::UnimplementedError("fake");
  }

  FakeGroup& group() { return group_; }
  std::shared_ptr<DeviceState> next_state;  // the last AllReduce's device side

 private:
  class FakeWork final : public Work {
   public:
    FakeWork(FakeDeviceCommunicator& comm, std::string what, int64_t seq,
             std::shared_ptr<DeviceState> state)
        : comm_(comm), what_(std::move(what)), seq_(seq), state_(std::move(state)) {}
    absl::Status Wait(absl::Duration) override { return absl::UnimplementedError("fake"); }
    bool Test() override { return state_->complete.load(); }
    absl::Status StreamWait(absl::Duration timeout) override {
      comm_.watchdog_.Watch(comm_.group_, what_, seq_, /*peer=*/-1, timeout,
                            std::make_unique<FakeDeviceWork>(state_));
      return absl::OkStatus();
    }

   private:
    FakeDeviceCommunicator& comm_;
    std::string what_;
    int64_t seq_;
    std::shared_ptr<DeviceState> state_;
  };

  CollectiveWatchdog& watchdog_;
  FakeGroup group_;
  absl::Duration timeout_;
  std::vector<int> world_ranks_;
  int64_t seq_ = 0;
};

// What the watchdog thread reported, in place of ending the process.
struct Reports {
  absl::Mutex mu;
  std::vector<absl::Status> statuses ABSL_GUARDED_BY(mu);
  CollectiveWatchdog::OnFailure Handler() {
    return [this](const absl::Status& status) {
      absl::MutexLock lock(&mu);
      statuses.push_back(status);
    };
  }
  // Waits up to 10 s for `n` reports.
  std::vector<absl::Status> AwaitCount(size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return statuses.size() >= n; };
    mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
    return statuses;
  }
};

bool Contains(const absl::Status& status, const std::string& text) {
  return status.message().find(text) != std::string::npos;
}

TEST(CollectiveWatchdog, AHungCollectiveTheHostDoesNotWaitForAbortsTheGroupWithExit5) {
  Reports reports;
  CollectiveWatchdog watchdog(absl::Milliseconds(5), reports.Handler());
  FakeDeviceCommunicator comm(watchdog, "dp[ranks 2,3]", /*world_rank=*/3, absl::Milliseconds(100));
  float bucket[256] = {};
  // Ordered on the device: returns at once, as NCCL's CompleteOnDevice does.
  ASSERT_TRUE(comm.CompleteOnDevice(comm.AllReduce(bucket, 256, DType::kF32, ReduceOp::kSum)).ok());
  EXPECT_EQ(watchdog.watched(), 1);
  const absl::Time start = absl::Now();
  // The host now "blocks in Synchronize": only the thread can notice.
  const std::vector<absl::Status> got = reports.AwaitCount(1);
  ASSERT_EQ(got.size(), 1u) << "the watchdog thread reported nothing";
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));  // not before the deadline
  const absl::Status& status = got[0];
  EXPECT_EQ(ExitCodeFor(status), 5) << status;
  EXPECT_TRUE(Contains(status, "AllReduce(sum) of 256 x f32 (1024 bytes)")) << status;
  EXPECT_TRUE(Contains(status, "group 'dp[ranks 2,3]'")) << status;
  EXPECT_TRUE(Contains(status, "sequence #1")) << status;
  EXPECT_TRUE(Contains(status, "on world rank 3")) << status;
  EXPECT_TRUE(Contains(status, "did not complete within 100ms")) << status;
  EXPECT_TRUE(Contains(status, "ranks that never arrived (world ranks): 1")) << status;
  EXPECT_TRUE(Contains(status, "caught by the watchdog thread")) << status;
  EXPECT_TRUE(Contains(status, "the communicator of group 'dp[ranks 2,3]' was aborted")) << status;
  EXPECT_EQ(comm.group().aborts.load(), 1);
  EXPECT_EQ(watchdog.watched(), 0);
  EXPECT_EQ(watchdog.reported(), 1);
  // The aborted group takes no more work; the failure is reported once.
  EXPECT_FALSE(comm.AllReduce(bucket, 1, DType::kF32, ReduceOp::kSum).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(watchdog.reported(), 1);
  EXPECT_EQ(comm.group().aborts.load(), 1);
}

TEST(CollectiveWatchdog, CollectivesThatCompleteAreDroppedAndNothingIsAborted) {
  Reports reports;
  CollectiveWatchdog watchdog(absl::Milliseconds(2), reports.Handler());
  FakeDeviceCommunicator comm(watchdog, "tp", 1, absl::Milliseconds(200));
  float x[4] = {};
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(comm.CompleteOnDevice(comm.AllReduce(x, 4, DType::kF32, ReduceOp::kSum)).ok());
    comm.next_state->complete = true;  // the device finishes it
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (watchdog.watched() > 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_EQ(watchdog.watched(), 0);
  absl::SleepFor(absl::Milliseconds(300));  // past every deadline
  EXPECT_EQ(watchdog.reported(), 0);
  EXPECT_EQ(comm.group().aborts.load(), 0);
  EXPECT_TRUE(comm.AllReduce(x, 4, DType::kF32, ReduceOp::kSum).ok());
}

TEST(CollectiveWatchdog, TheGroupsNextOperationReportsFirstAndTheThreadStaysQuiet) {
  Reports reports;
  // A thread that would sweep only after a minute: the host gets there first.
  CollectiveWatchdog watchdog(absl::Minutes(1), reports.Handler());
  FakeDeviceCommunicator comm(watchdog, "ep", 5, absl::Milliseconds(20));
  float x[8] = {};
  ASSERT_TRUE(comm.CompleteOnDevice(comm.AllReduce(x, 8, DType::kF32, ReduceOp::kSum)).ok());
  // Before its deadline the next operation goes ahead.
  ASSERT_TRUE(comm.CompleteOnDevice(comm.AllReduce(x, 8, DType::kF32, ReduceOp::kSum)).ok());
  absl::SleepFor(absl::Milliseconds(40));
  const absl::Status status = comm.AllReduce(x, 8, DType::kF32, ReduceOp::kSum).status();
  EXPECT_EQ(ExitCodeFor(status), 5) << status;
  // The oldest of the two is named.
  EXPECT_TRUE(Contains(status, "sequence #1")) << status;
  EXPECT_TRUE(Contains(status, "caught by the group's next operation")) << status;
  EXPECT_TRUE(Contains(status, "on world rank 5")) << status;
  EXPECT_EQ(comm.group().aborts.load(), 1);
  EXPECT_EQ(watchdog.watched(), 0);  // the group's other work is forgotten
  EXPECT_EQ(watchdog.reported(), 0);
}

TEST(CollectiveWatchdog, AFailedCollectiveIsReportedBeforeItsDeadlineWithItsCause) {
  Reports reports;
  CollectiveWatchdog watchdog(absl::Milliseconds(2), reports.Handler());
  FakeDeviceCommunicator comm(watchdog, "dp", 1, absl::Hours(1));
  float x[2] = {};
  ASSERT_TRUE(comm.CompleteOnDevice(comm.AllReduce(x, 2, DType::kF32, ReduceOp::kSum)).ok());
  {
    absl::MutexLock lock(&comm.next_state->mu);
    comm.next_state->failure = absl::InternalError("NCCL error 6: remote process exited");
  }
  const std::vector<absl::Status> got = reports.AwaitCount(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(ExitCodeFor(got[0]), 5) << got[0];
  EXPECT_TRUE(Contains(got[0], "failed: NCCL error 6: remote process exited")) << got[0];
  EXPECT_TRUE(Contains(got[0], "was aborted")) << got[0];
  EXPECT_EQ(comm.group().aborts.load(), 1);
}

TEST(CollectiveWatchdog, ForgottenGroupsAreNotWatched) {
  Reports reports;
  CollectiveWatchdog watchdog(absl::Milliseconds(2), reports.Handler());
  {
    FakeDeviceCommunicator comm(watchdog, "sp", 2, absl::Milliseconds(10));
    float x[2] = {};
    ASSERT_TRUE(comm.CompleteOnDevice(comm.AllReduce(x, 2, DType::kF32, ReduceOp::kSum)).ok());
    EXPECT_EQ(watchdog.watched(), 1);
  }  // destroyed: Forget
  EXPECT_EQ(watchdog.watched(), 0);
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(watchdog.reported(), 0);
}

// The real exit path: the default on_failure is ExitJobFromThread, which
// makes no MPI call (the watchdog thread may not call MPI under
// MPI_THREAD_FUNNELED), prints "[rank R] <message>" with the group's world
// rank and _exits with the status's code, 5.
TEST(CollectiveWatchdogDeathTest, TheDefaultEndsTheProcessWithExit5NamingTheCollective) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        CollectiveWatchdog watchdog(absl::Milliseconds(5));
        FakeDeviceCommunicator comm(watchdog, "dp", 3, absl::Milliseconds(50));
        float x[16] = {};
        if (!comm.CompleteOnDevice(comm.AllReduce(x, 16, DType::kF32, ReduceOp::kSum)).ok()) {
          std::_Exit(1);
        }
        absl::SleepFor(absl::Seconds(30));  // "blocked in Synchronize"
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(5),
      "\\[rank 3\\] watchdog: AllReduce\\(sum\\) of 16 x f32 \\(64 bytes\\) on group 'dp'.* on world rank 3 "
      ".*did not complete within 50ms.*the communicator of group 'dp' was aborted");
}

}  // namespace
}  // namespace tessera::parallel
