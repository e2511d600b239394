// CommunicatorHostGroup against values every rank can compute for every other
// rank: variable-length all-gather (empty and unequal lengths, embedded NULs),
// broadcast from each root, max/min reductions. Runs at any world size.
#include "parallel/comm/host_group_adapter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "parallel/comm/mpi_communicator.h"
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

// Rank r's message: r*5 bytes (rank 0 sends nothing), including NULs.
std::string Message(int rank) {
  std::string s;
  for (int i = 0; i < rank * 5; ++i) s.push_back(static_cast<char>((rank * 31 + i * 7) % 256));
  return s;
}

TEST(CommunicatorHostGroup, AllGatherReturnsEveryRanksBytesWithTheirOwnLengths) {
  auto world = World();
  CommunicatorHostGroup group(world.get());
  auto gathered = group.AllGather(Message(group.rank()));
  ASSERT_TRUE(gathered.ok()) << gathered.status();
  ASSERT_EQ(gathered->size(), static_cast<size_t>(group.size()));
  for (int r = 0; r < group.size(); ++r) EXPECT_EQ((*gathered)[r], Message(r)) << "rank " << r;
}

TEST(CommunicatorHostGroup, AllGatherOfEmptyStringsIsEmptyStrings) {
  auto world = World();
  CommunicatorHostGroup group(world.get());
  auto gathered = group.AllGather("");
  ASSERT_TRUE(gathered.ok()) << gathered.status();
  EXPECT_EQ(*gathered, std::vector<std::string>(group.size()));
}

TEST(CommunicatorHostGroup, BroadcastDeliversRootBytesOfAnyLengthFromEveryRoot) {
  auto world = World();
  CommunicatorHostGroup group(world.get());
  for (int root = 0; root < group.size(); ++root) {
    std::string bytes = group.rank() == root ? Message(root + 1) : std::string("stale junk");
    ASSERT_TRUE(group.Broadcast(&bytes, root).ok());
    EXPECT_EQ(bytes, Message(root + 1)) << "root " << root;
  }
  std::string empty = group.rank() == 0 ? "" : "x";
  ASSERT_TRUE(group.Broadcast(&empty, 0).ok());
  EXPECT_EQ(empty, "");
  std::string ignored;
  EXPECT_FALSE(group.Broadcast(&ignored, group.size()).ok());
}

TEST(CommunicatorHostGroup, AllReduceMaxAndMinMatchTheRankValues) {
  auto world = World();
  CommunicatorHostGroup group(world.get());
  // Values beyond 32 bits; rank r holds (r - 1) * 2^40.
  const int64_t mine = (int64_t{group.rank()} - 1) << 40;
  auto max = group.AllReduceMax(mine);
  auto min = group.AllReduceMin(mine);
  ASSERT_TRUE(max.ok() && min.ok());
  EXPECT_EQ(*max, (int64_t{group.size()} - 2) << 40);
  EXPECT_EQ(*min, int64_t{-1} << 40);
  ASSERT_TRUE(group.Barrier().ok());
}

}  // namespace
}  // namespace tessera::parallel
