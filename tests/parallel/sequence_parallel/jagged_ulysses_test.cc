// The jagged Ulysses exchange (CTest: 1, 2 and 4 ranks): ToHeads gives
// every token's columns of this rank's part of each block, in token order;
// ToTokens is its inverse and leaves the other columns alone; token counts
// that do not divide by sp, ranks holding no token, and an empty batch.
#include "parallel/sequence_parallel/jagged_ulysses.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

std::unique_ptr<MpiCommunicator> World() {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(60));
  EXPECT_TRUE(world.ok()) << world.status();
  return std::move(*world);
}

// The value of token t, column c of block b: the same formula on every rank.
float Value(int64_t t, int b, int64_t c) { return static_cast<float>(1000 * t + 100 * b + c); }

TEST(SequenceShard, SplitsTokensIntoContiguousNearlyEqualRanges) {
  for (int64_t total : {0, 1, 5, 9, 12}) {
    for (int ranks : {1, 2, 3, 4}) {
      int64_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const TokenRange range = SequenceShard(total, r, ranks);
        EXPECT_EQ(range.begin, next) << total << " over " << ranks;
        EXPECT_GE(range.size(), total / ranks);
        EXPECT_LE(range.size(), total / ranks + 1);
        next = range.end;
      }
      EXPECT_EQ(next, total);
    }
  }
}

// Two blocks of widths 2 sp and 3 sp (rows 7 sp + 1 floats apart, so the
// blocks sit inside a wider matrix with a padding column).
void RoundTrip(int64_t total) {
  auto world = World();
  Communicator& sp = *world;
  const int n = sp.size();
  JaggedUlysses exchange(sp, total);
  const TokenRange mine = exchange.mine();
  const int64_t widths[2] = {2 * n, 3 * n}, stride = 5 * n + 1;
  std::vector<float> local(static_cast<size_t>(mine.size() * stride), -1.0f);
  for (int64_t t = 0; t < mine.size(); ++t) {
    for (int b = 0; b < 2; ++b) {
      for (int64_t c = 0; c < widths[b]; ++c) {
        local[t * stride + (b == 0 ? 0 : widths[0]) + c] = Value(mine.begin + t, b, c);
      }
    }
  }
  const ColumnBlock blocks[2] = {{local.data(), stride, widths[0]},
                                 {local.data() + widths[0], stride, widths[1]}};
  Arena arena;
  absl::StatusOr<Tensor> whole = exchange.ToHeads(arena, blocks);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->dim(0), total);
  ASSERT_EQ(whole->dim(1), 5);  // 2 + 3 columns of this rank's part
  const int r = sp.rank();
  for (int64_t t = 0; t < total; ++t) {
    const float* row = whole->data<float>() + t * 5;
    for (int64_t c = 0; c < 2; ++c) EXPECT_EQ(row[c], Value(t, 0, r * 2 + c)) << t;
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(row[2 + c], Value(t, 1, r * 3 + c)) << t;
  }
  // Back: every column of both blocks comes home; the padding stays.
  std::vector<float> back(local.size(), -7.0f);
  const ColumnBlock into[2] = {{back.data(), stride, widths[0]},
                               {back.data() + widths[0], stride, widths[1]}};
  ASSERT_TRUE(exchange.ToTokens(arena, *whole, into).ok());
  for (int64_t t = 0; t < mine.size(); ++t) {
    for (int64_t c = 0; c < 5 * n; ++c) EXPECT_EQ(back[t * stride + c], local[t * stride + c]);
    EXPECT_EQ(back[t * stride + 5 * n], -7.0f);
  }
}

TEST(JaggedUlysses, TokensThatDivideBySp) { RoundTrip(12); }
TEST(JaggedUlysses, TokensThatDoNotDivideBySp) { RoundTrip(7); }
TEST(JaggedUlysses, FewerTokensThanRanks) { RoundTrip(1); }
TEST(JaggedUlysses, AnEmptyBatch) { RoundTrip(0); }

}  // namespace
}  // namespace tessera::parallel
