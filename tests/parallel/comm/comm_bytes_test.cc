// The MPI communicator's traffic accounting (bytes_sent(), calls()) against
// the definition in mpi_communicator.h, derived by hand for each operation
// from its arguments and the group size. Runs at any world size (1 to 4).
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/base/status.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

std::unique_ptr<MpiCommunicator> World() {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  TESSERA_CHECK(world.ok());
  return std::move(*world);
}

// Issues one operation and checks what it added to the counters.
class Counted {
 public:
  explicit Counted(MpiCommunicator& comm) : comm_(comm) {}
  template <typename Issue>
  void Expect(const char* what, int64_t bytes, Issue issue) {
    const int64_t bytes_before = comm_.bytes_sent(), calls_before = comm_.calls();
    ASSERT_TRUE(comm_.Complete(issue()).ok()) << what;
    EXPECT_EQ(comm_.bytes_sent() - bytes_before, bytes) << what;
    EXPECT_EQ(comm_.calls() - calls_before, 1) << what;
  }

 private:
  MpiCommunicator& comm_;
};

TEST(CommBytes, EachCollectiveCountsItsPayloadFromThisRanksView) {
  auto world = World();
  const int n = world->size(), me = world->rank();
  // Nothing leaves a process that is its own group.
  const int64_t many = n > 1 ? 1 : 0;
  EXPECT_EQ(world->bytes_sent(), 0);
  EXPECT_EQ(world->calls(), 0);
  Counted counted(*world);

  std::vector<float> seven(7, 1.0f);
  // The buffer: 7 floats.
  counted.Expect("AllReduce 7 x f32", many * 28,
                 [&] { return world->AllReduce(seven.data(), 7, DType::kF32, ReduceOp::kSum); });
  counted.Expect("AllReduce of nothing", 0,
                 [&] { return world->AllReduce(seven.data(), 0, DType::kF32, ReduceOp::kSum); });

  // The receive buffer: n blocks of 5 int64.
  std::vector<int64_t> five(5, me), gathered(5 * n);
  counted.Expect("AllGather 5 x i64", many * n * 5 * 8,
                 [&] { return world->AllGather(five.data(), gathered.data(), 5, DType::kI64); });

  // The send buffer: n blocks of 3 floats.
  std::vector<float> scatter_in(3 * n, 1.0f), scatter_out(3);
  counted.Expect("ReduceScatter 3 x f32 per rank", many * n * 3 * 4, [&] {
    return world->ReduceScatter(scatter_in.data(), scatter_out.data(), 3, DType::kF32,
                                ReduceOp::kSum);
  });

  // The blocks for the other n - 1 ranks: 2 int32 each.
  std::vector<int32_t> a2a_in(2 * n, me), a2a_out(2 * n);
  counted.Expect("AllToAll 2 x i32 per rank", (n - 1) * 2 * 4,
                 [&] { return world->AllToAll(a2a_in.data(), a2a_out.data(), 2, DType::kI32); });

  // Rank q sends r + q + 1 floats to rank r; only blocks to others count.
  std::vector<size_t> send_counts(n), recv_counts(n);
  int64_t to_others = 0;
  for (int r = 0; r < n; ++r) {
    send_counts[r] = static_cast<size_t>(r + me + 1);
    recv_counts[r] = static_cast<size_t>(me + r + 1);
    if (r != me) to_others += r + me + 1;
  }
  std::vector<float> v_in(std::accumulate(send_counts.begin(), send_counts.end(), size_t{0}));
  std::vector<float> v_out(std::accumulate(recv_counts.begin(), recv_counts.end(), size_t{0}));
  counted.Expect("AllToAllV", to_others * 4, [&] {
    return world->AllToAllV(v_in.data(), send_counts, v_out.data(), recv_counts, DType::kF32);
  });
  // Hand check of the sum above at rank 0: 2 + 3 + ... + n floats.
  if (me == 0) {
    EXPECT_EQ(to_others, n * (n + 1) / 2 - 1);
  }

  // The buffer, on the root and everyone else alike.
  std::vector<uint8_t> nine(9, 0);
  counted.Expect("Broadcast 9 x u8", many * 9,
                 [&] { return world->Broadcast(nine.data(), 9, DType::kU8, /*root=*/0); });
  counted.Expect("Barrier", 0, [&] { return world->Barrier(); });

  // The running totals over the eight calls.
  EXPECT_EQ(world->calls(), 8);
  EXPECT_EQ(world->bytes_sent(), many * (28 + n * 40 + n * 12 + 9) + (n - 1) * 8 + to_others * 4);
}

TEST(CommBytes, SendCountsAtTheSenderAndRecvCountsNoBytes) {
  auto world = World();
  const int n = world->size(), me = world->rank();
  if (n == 1) GTEST_SKIP() << "needs a peer";
  // A ring: 6 doubles (48 bytes) to the next rank, from the previous one.
  std::vector<double> out(6, me), in(6);
  auto recv = world->Recv(in.data(), 6 * sizeof(double), DType::kU8, (me + n - 1) % n, 5);
  auto send = world->Send(out.data(), 6 * sizeof(double), DType::kU8, (me + 1) % n, 5);
  ASSERT_TRUE(world->Complete(std::move(send)).ok());
  ASSERT_TRUE(world->Complete(std::move(recv)).ok());
  EXPECT_EQ(world->bytes_sent(), 48);
  EXPECT_EQ(world->calls(), 2);
}

TEST(CommBytes, GroupOfOneRankCountsCallsButNoBytes) {
  auto world = World();
  auto alone = world->CreateSubgroup({world->rank()}, "alone");
  ASSERT_TRUE(alone.ok());
  std::vector<float> data(100, 1.0f), gathered(100);
  ASSERT_TRUE(
      (*alone)->Complete((*alone)->AllReduce(data.data(), 100, DType::kF32, ReduceOp::kSum)).ok());
  ASSERT_TRUE(
      (*alone)->Complete((*alone)->AllGather(data.data(), gathered.data(), 100, DType::kF32)).ok());
  EXPECT_EQ((*alone)->bytes_sent(), 0);
  EXPECT_EQ((*alone)->calls(), 2);
}

TEST(CommBytes, CountersArePerCommunicatorAndResetClearsThem) {
  auto first = World();
  auto second = World();
  const int n = first->size();
  std::vector<float> data(10, 1.0f);
  ASSERT_TRUE(first->Complete(first->AllReduce(data.data(), 10, DType::kF32, ReduceOp::kSum)).ok());
  EXPECT_EQ(first->bytes_sent(), n > 1 ? 40 : 0);
  EXPECT_EQ(first->calls(), 1);
  EXPECT_EQ(second->bytes_sent(), 0);
  EXPECT_EQ(second->calls(), 0);

  first->ResetCounters();
  EXPECT_EQ(first->bytes_sent(), 0);
  EXPECT_EQ(first->calls(), 0);
  ASSERT_TRUE(first->Complete(first->AllReduce(data.data(), 3, DType::kF32, ReduceOp::kSum)).ok());
  EXPECT_EQ(first->bytes_sent(), n > 1 ? 12 : 0);
  EXPECT_EQ(first->calls(), 1);
}

TEST(CommBytes, CallRejectedByItsArgumentChecksIsNotCounted) {
  auto world = World();
  std::vector<float> data(4);
  // One count too many for the group: InvalidArgument before anything is issued.
  std::vector<size_t> counts(world->size() + 1, 1);
  EXPECT_FALSE(world->AllToAllV(data.data(), counts, data.data() + 2, counts, DType::kF32).ok());
  // bf16 cannot be reduced by MPI.
  EXPECT_FALSE(world->AllReduce(data.data(), 2, DType::kBF16, ReduceOp::kSum).ok());
  EXPECT_EQ(world->bytes_sent(), 0);
  EXPECT_EQ(world->calls(), 0);
}

}  // namespace
}  // namespace tessera::parallel
