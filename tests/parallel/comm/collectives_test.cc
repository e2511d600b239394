// Every collective of the MPI backend against a naive double-precision
// reference computed locally from the deterministic inputs of all ranks.
// Runs at any world size (CTest: 1 to 4 ranks).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

// Empty, a single element, odd sizes.
constexpr size_t kSizes[] = {0, 1, 7, 1023};

std::unique_ptr<MpiCommunicator> World() {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  TESSERA_CHECK(world.ok());
  return std::move(*world);
}

// A small integer in [-11, 11], different per rank, element and salt.
double Base(int rank, size_t i, int salt) {
  return static_cast<double>((static_cast<size_t>(rank) * 131 + i * 7 + salt * 17) % 23) - 11.0;
}

// Input values, exact in their type; i64 values need more than 32 bits.
template <typename T>
T Input(int rank, size_t i, int salt);
template <>
float Input<float>(int rank, size_t i, int salt) {
  return static_cast<float>(Base(rank, i, salt) * 0.375);
}
template <>
int32_t Input<int32_t>(int rank, size_t i, int salt) {
  return static_cast<int32_t>(Base(rank, i, salt) * 1000);
}
template <>
int64_t Input<int64_t>(int rank, size_t i, int salt) {
  return static_cast<int64_t>(Base(rank, i, salt)) + ((int64_t{rank} + 1) << 33);
}
template <>
uint8_t Input<uint8_t>(int rank, size_t i, int salt) {
  return static_cast<uint8_t>(Base(rank, i, salt) + 11);  // sums of 4 stay below 256
}

// op over ranks 0..size-1 of Input(rank, i, salt), in double.
template <typename T>
double Reference(ReduceOp op, int size, size_t i, int salt) {
  double result = op == ReduceOp::kMax ? -INFINITY : 0.0;
  for (int r = 0; r < size; ++r) {
    const double x = static_cast<double>(Input<T>(r, i, salt));
    result = op == ReduceOp::kMax ? std::max(result, x) : result + x;
  }
  return op == ReduceOp::kAvg ? result / size : result;
}

template <typename T>
void ExpectClose(T got, double want, const char* what, size_t i) {
  if constexpr (std::is_same_v<T, float>) {
    EXPECT_NEAR(got, want, 1e-6 * std::max(1.0, std::abs(want))) << what << " element " << i;
  } else {
    EXPECT_EQ(static_cast<double>(got), want) << what << " element " << i;
  }
}

std::vector<ReduceOp> OpsFor(DType dtype) {
  if (dtype == DType::kF32) return {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax};
  return {ReduceOp::kSum, ReduceOp::kMax};
}

template <typename T>
class CollectiveTest : public ::testing::Test {};
using Types = ::testing::Types<float, int32_t, int64_t, uint8_t>;
TYPED_TEST_SUITE(CollectiveTest, Types);

TYPED_TEST(CollectiveTest, AllReduceMatchesNaiveReferenceForEveryOpAndSize) {
  using T = TypeParam;
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  int salt = 0;
  for (ReduceOp op : OpsFor(DTypeOf<T>())) {
    for (size_t count : kSizes) {
      ++salt;
      std::vector<T> data(count);
      for (size_t i = 0; i < count; ++i) data[i] = Input<T>(me, i, salt);
      const absl::Status status =
          comm->Complete(comm->AllReduce(data.data(), count, DTypeOf<T>(), op));
      ASSERT_TRUE(status.ok()) << status;
      for (size_t i = 0; i < count; ++i)
        ExpectClose(data[i], Reference<T>(op, n, i, salt), "all-reduce", i);
    }
  }
}

TYPED_TEST(CollectiveTest, ReduceScatterGivesEachRankItsReducedBlock) {
  using T = TypeParam;
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  int salt = 100;
  for (ReduceOp op : OpsFor(DTypeOf<T>())) {
    for (size_t count : kSizes) {
      ++salt;
      std::vector<T> send(count * n), recv(count);
      for (size_t i = 0; i < send.size(); ++i) send[i] = Input<T>(me, i, salt);
      const absl::Status status =
          comm->Complete(comm->ReduceScatter(send.data(), recv.data(), count, DTypeOf<T>(), op));
      ASSERT_TRUE(status.ok()) << status;
      for (size_t i = 0; i < count; ++i) {
        ExpectClose(recv[i], Reference<T>(op, n, me * count + i, salt), "reduce-scatter", i);
      }
    }
  }
}

TYPED_TEST(CollectiveTest, AllGatherConcatenatesBlocksInRankOrder) {
  using T = TypeParam;
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  for (size_t count : kSizes) {
    std::vector<T> send(count), recv(count * n);
    for (size_t i = 0; i < count; ++i) send[i] = Input<T>(me, i, 7);
    const absl::Status status =
        comm->Complete(comm->AllGather(send.data(), recv.data(), count, DTypeOf<T>()));
    ASSERT_TRUE(status.ok()) << status;
    for (int r = 0; r < n; ++r) {
      for (size_t i = 0; i < count; ++i)
        ExpectClose(recv[r * count + i], Input<T>(r, i, 7) * 1.0, "all-gather", i);
    }
  }
}

TYPED_TEST(CollectiveTest, AllToAllTransposesBlocks) {
  using T = TypeParam;
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  for (size_t count : kSizes) {
    // Block r of rank q's send buffer holds Input(q, r * count + i).
    std::vector<T> send(count * n), recv(count * n);
    for (size_t i = 0; i < send.size(); ++i) send[i] = Input<T>(me, i, 9);
    const absl::Status status =
        comm->Complete(comm->AllToAll(send.data(), recv.data(), count, DTypeOf<T>()));
    ASSERT_TRUE(status.ok()) << status;
    for (int q = 0; q < n; ++q) {
      for (size_t i = 0; i < count; ++i) {
        ExpectClose(recv[q * count + i], Input<T>(q, me * count + i, 9) * 1.0, "all-to-all", i);
      }
    }
  }
}

// Elements rank q sends to rank r: some pairs (including to self) send none.
size_t PairCount(int q, int r) { return static_cast<size_t>((q + 2 * r) % 3) * 5; }

TYPED_TEST(CollectiveTest, AllToAllVDeliversVariableBlocksIncludingEmptyOnes) {
  using T = TypeParam;
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  std::vector<size_t> send_counts(n), recv_counts(n);
  for (int r = 0; r < n; ++r) {
    send_counts[r] = PairCount(me, r);
    recv_counts[r] = PairCount(r, me);
  }
  size_t recv_total = 0;
  for (size_t c : recv_counts) recv_total += c;
  std::vector<T> send, recv(recv_total);  // [sum of counts]
  for (int r = 0; r < n; ++r) {
    for (size_t j = 0; j < send_counts[r]; ++j) send.push_back(Input<T>(me, r * 1000 + j, 11));
  }
  const absl::Status status = comm->Complete(
      comm->AllToAllV(send.data(), send_counts, recv.data(), recv_counts, DTypeOf<T>()));
  ASSERT_TRUE(status.ok()) << status;
  size_t offset = 0;
  for (int q = 0; q < n; ++q) {
    for (size_t j = 0; j < recv_counts[q]; ++j) {
      ExpectClose(recv[offset + j], Input<T>(q, me * 1000 + j, 11) * 1.0, "all-to-all-v", j);
    }
    offset += recv_counts[q];
  }
}

TYPED_TEST(CollectiveTest, BroadcastCopiesTheRootsBufferFromEveryRoot) {
  using T = TypeParam;
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  for (int root = 0; root < n; ++root) {
    for (size_t count : kSizes) {
      std::vector<T> data(count);
      for (size_t i = 0; i < count; ++i) data[i] = me == root ? Input<T>(root, i, 13) : T{1};
      const absl::Status status =
          comm->Complete(comm->Broadcast(data.data(), count, DTypeOf<T>(), root));
      ASSERT_TRUE(status.ok()) << status;
      for (size_t i = 0; i < count; ++i)
        ExpectClose(data[i], Input<T>(root, i, 13) * 1.0, "broadcast", i);
    }
  }
}

// All-reduces of at least kThreadedAllReduceBytes run as blocking calls on
// the group's collective thread (its own duplicate communicator), the rest as
// non-blocking calls: several of each in flight at once on one group, waited
// for out of order, must each give the reference, including kAvg's division.
TEST(Collectives, ThreadedAllReducesInterleaveWithNonBlockingCalls) {
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  const size_t large = kThreadedAllReduceBytes / sizeof(float) + 5;
  std::vector<float> a(large), b(large), small(7), gathered(7 * n);
  for (size_t i = 0; i < large; ++i) {
    a[i] = Input<float>(me, i, 31);
    b[i] = Input<float>(me, i, 37);
  }
  for (size_t i = 0; i < small.size(); ++i) small[i] = Input<float>(me, i, 41);
  auto first = comm->AllReduce(a.data(), large, DType::kF32, ReduceOp::kSum);
  auto between = comm->AllGather(small.data(), gathered.data(), small.size(), DType::kF32);
  auto second = comm->AllReduce(b.data(), large, DType::kF32, ReduceOp::kAvg);
  auto last = comm->AllReduce(small.data(), small.size(), DType::kF32, ReduceOp::kMax);
  ASSERT_TRUE(first.ok() && between.ok() && second.ok() && last.ok());
  for (Work* work : {last->get(), second->get(), between->get(), first->get()}) {
    const absl::Status status = work->Wait(comm->timeout());
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_TRUE(work->Test());
  }
  for (size_t i = 0; i < large; ++i) {
    ExpectClose(a[i], Reference<float>(ReduceOp::kSum, n, i, 31), "threaded sum", i);
    ExpectClose(b[i], Reference<float>(ReduceOp::kAvg, n, i, 37), "threaded avg", i);
  }
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < small.size(); ++i) {
      EXPECT_EQ(gathered[r * small.size() + i], Input<float>(r, i, 41));
    }
  }
  for (size_t i = 0; i < small.size(); ++i) {
    ExpectClose(small[i], Reference<float>(ReduceOp::kMax, n, i, 41), "non-blocking max", i);
  }
  EXPECT_EQ(comm->bytes_sent(), n > 1 ? static_cast<int64_t>((2 * large + 7 + 7 * n) * 4) : 0);
}

TEST(Collectives, SendRecvRingPassesEachRanksBufferToItsSuccessor) {
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  for (size_t count : kSizes) {
    std::vector<float> send(count), recv(count, -1.0f);
    for (size_t i = 0; i < count; ++i) send[i] = Input<float>(me, i, 17);
    const int next = (me + 1) % n, previous = (me + n - 1) % n;
    auto receive = comm->Recv(recv.data(), count, DType::kF32, previous, /*tag=*/3);
    auto sent = comm->Send(send.data(), count, DType::kF32, next, /*tag=*/3);
    ASSERT_TRUE(receive.ok() && sent.ok());
    ASSERT_TRUE((*sent)->Wait(comm->timeout()).ok());
    ASSERT_TRUE((*receive)->Wait(comm->timeout()).ok());
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(recv[i], Input<float>(previous, i, 17));
  }
}

TEST(Collectives, BarrierAndTestReportCompletion) {
  auto comm = World();
  auto work = comm->Barrier();
  ASSERT_TRUE(work.ok());
  ASSERT_TRUE((*work)->Wait(comm->timeout()).ok());
  EXPECT_TRUE((*work)->Test());  // stays complete
  auto second = comm->Barrier();
  ASSERT_TRUE(second.ok());
  const absl::Time deadline = absl::Now() + comm->timeout();
  while (!(*second)->Test() && absl::Now() < deadline) {
  }
  EXPECT_TRUE((*second)->Test());
  EXPECT_TRUE((*second)->Wait(absl::ZeroDuration()).ok());
}

TEST(Collectives, InPlaceReduceScatterAndAllGatherFollowNcclConvention) {
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  // Non-blocking, and on the collective thread (kThreadedAllReduceBytes up).
  for (const size_t count : {size_t{7}, kThreadedAllReduceBytes / sizeof(float) + 3}) {
  std::vector<float> buffer(count * n);
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = Input<float>(me, i, 19);
  float* own = buffer.data() + me * count;
  absl::Status status =
      comm->Complete(comm->ReduceScatter(buffer.data(), own, count, DType::kF32, ReduceOp::kAvg));
  ASSERT_TRUE(status.ok()) << status;
  for (size_t i = 0; i < count; ++i) {
    ExpectClose(own[i], Reference<float>(ReduceOp::kAvg, n, me * count + i, 19), "in-place rs", i);
  }
  // Gather the reduced blocks back: the full averaged buffer on every rank.
  status = comm->Complete(comm->AllGather(own, buffer.data(), count, DType::kF32));
  ASSERT_TRUE(status.ok()) << status;
  for (size_t i = 0; i < buffer.size(); ++i) {
    ExpectClose(buffer[i], Reference<float>(ReduceOp::kAvg, n, i, 19), "in-place ag", i);
  }
  }
}

// Reduce-scatters of at least kThreadedAllReduceBytes run on the collective
// thread too (out of place here), interleaved with non-blocking calls (the
// all-gather at every size) and waited for out of order.
TEST(Collectives, ThreadedReduceScattersInterleaveWithNonBlockingCalls) {
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  const size_t block = kThreadedAllReduceBytes / sizeof(float) + 5;
  std::vector<float> send(block * n), reduced(block, -1.0f), gathered(block * n, -1.0f);
  std::vector<float> small(3), small_sum(3);
  for (size_t i = 0; i < send.size(); ++i) send[i] = Input<float>(me, i, 43);
  for (size_t i = 0; i < small.size(); ++i) small[i] = small_sum[i] = Input<float>(me, i, 47);
  auto scatter = comm->ReduceScatter(send.data(), reduced.data(), block, DType::kF32,
                                     ReduceOp::kSum);
  auto between = comm->AllReduce(small_sum.data(), small.size(), DType::kF32, ReduceOp::kSum);
  auto gather = comm->AllGather(send.data() + me * block, gathered.data(), block, DType::kF32);
  ASSERT_TRUE(scatter.ok() && between.ok() && gather.ok());
  for (Work* work : {gather->get(), between->get(), scatter->get()}) {
    const absl::Status status = work->Wait(comm->timeout());
    ASSERT_TRUE(status.ok()) << status;
  }
  for (size_t i = 0; i < block; ++i) {
    ExpectClose(reduced[i], Reference<float>(ReduceOp::kSum, n, me * block + i, 43),
                "threaded rs", i);
  }
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < block; ++i) {
      ASSERT_EQ(gathered[r * block + i], Input<float>(r, r * block + i, 43)) << r << " " << i;
    }
  }
  for (size_t i = 0; i < small.size(); ++i) {
    ExpectClose(small_sum[i], Reference<float>(ReduceOp::kSum, n, i, 47), "non-blocking sum", i);
  }
}

TEST(Collectives, SixteenBitFloatsMoveButDoNotReduce) {
  auto comm = World();
  const int me = comm->rank(), n = comm->size();
  std::vector<uint16_t> send(3), recv(3 * n);
  for (size_t i = 0; i < 3; ++i) send[i] = FloatToBF16(Input<float>(me, i, 23));
  absl::Status status = comm->Complete(comm->AllGather(send.data(), recv.data(), 3, DType::kBF16));
  ASSERT_TRUE(status.ok()) << status;
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(BF16ToFloat(recv[r * 3 + i]), Input<float>(r, i, 23));
  }
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    auto work = comm->AllReduce(send.data(), 3, dtype, ReduceOp::kSum);
    ASSERT_FALSE(work.ok());
    EXPECT_EQ(work.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(work.status().message().find("reduce in f32"), absl::string_view::npos);
  }
}

TEST(Collectives, InvalidArgumentsFailBeforeAnyCommunication) {
  auto comm = World();
  const int n = comm->size();
  std::vector<int32_t> data(4 * n);
  EXPECT_EQ(comm->AllReduce(data.data(), 4, DType::kI32, ReduceOp::kAvg).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->Broadcast(data.data(), 4, DType::kI32, n).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->Send(data.data(), 4, DType::kI32, 0, -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->AllToAllV(data.data(), std::vector<size_t>(n + 1), data.data(),
                            std::vector<size_t>(n), DType::kI32)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->AllToAll(data.data(), data.data(), 1, DType::kI32).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing was issued: the group's sequence has not moved.
  EXPECT_EQ(comm->last_sequence(), 0);
}

TEST(Collectives, EvenAndOddSubgroupsReduceOnlyTheirMembers) {
  auto world = World();
  const int me = world->rank(), n = world->size();
  std::vector<int> members;
  for (int r = me % 2; r < n; r += 2) members.push_back(r);
  auto group = world->CreateSubgroup(members, me % 2 == 0 ? "even" : "odd");
  ASSERT_TRUE(group.ok()) << group.status();
  ASSERT_NE(*group, nullptr);
  MpiCommunicator& comm = **group;
  EXPECT_EQ(comm.size(), static_cast<int>(members.size()));
  EXPECT_EQ(comm.world_ranks(), members);
  EXPECT_EQ(comm.world_ranks()[comm.rank()], me);
  std::vector<int64_t> data(7);
  for (size_t i = 0; i < data.size(); ++i) data[i] = Input<int64_t>(me, i, 29);
  const absl::Status status =
      comm.Complete(comm.AllReduce(data.data(), data.size(), DType::kI64, ReduceOp::kSum));
  ASSERT_TRUE(status.ok()) << status;
  for (size_t i = 0; i < data.size(); ++i) {
    int64_t want = 0;
    for (int r : members) want += Input<int64_t>(r, i, 29);
    EXPECT_EQ(data[i], want);
  }
}

TEST(Collectives, RankOutsideItsListGetsNoCommunicator) {
  auto world = World();
  auto group = world->CreateSubgroup({0}, "rank0");
  ASSERT_TRUE(group.ok()) << group.status();
  if (world->rank() == 0) {
    ASSERT_NE(*group, nullptr);
    EXPECT_EQ((*group)->size(), 1);
    float x = 2.5f;
    EXPECT_TRUE((*group)->Complete((*group)->AllReduce(&x, 1, DType::kF32, ReduceOp::kSum)).ok());
    EXPECT_EQ(x, 2.5f);
  } else {
    EXPECT_EQ(*group, nullptr);
  }
}

}  // namespace
}  // namespace tessera::parallel
