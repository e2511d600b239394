#include "data/sampler.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/base/errors.h"

namespace tessera {
namespace {

std::vector<int64_t> Concatenate(const std::vector<std::vector<int64_t>>& parts) {
  std::vector<int64_t> all;
  for (const auto& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

std::vector<std::vector<int64_t>> Batches(Sampler& sampler, int count, int64_t global_batch) {
  std::vector<std::vector<int64_t>> batches;
  for (int i = 0; i < count; ++i) batches.push_back(sampler.NextGlobalBatch(global_batch));
  return batches;
}

TEST(Sampler, SameSeedGivesSameSequenceAndOtherSeedsDiffer) {
  Sampler a(100, 7), b(100, 7), c(100, 8);
  const auto batches_a = Batches(a, 12, 30);
  EXPECT_EQ(batches_a, Batches(b, 12, 30));
  EXPECT_NE(batches_a, Batches(c, 12, 30));
}

TEST(Sampler, EachEpochVisitsEveryIndexExactlyOnce) {
  for (int64_t n : {1, 2, 37, 1000}) {
    Sampler sampler(n, 3);
    for (int64_t epoch = 0; epoch < 4; ++epoch) {
      std::vector<int64_t> order = sampler.EpochOrder(epoch);
      std::sort(order.begin(), order.end());
      std::vector<int64_t> expected(static_cast<size_t>(n));
      std::iota(expected.begin(), expected.end(), int64_t{0});
      EXPECT_EQ(order, expected) << "n=" << n << " epoch=" << epoch;
    }
  }
}

TEST(Sampler, BatchesConcatenateToTheEpochOrdersAcrossEpochBoundaries) {
  // 37 samples, batches of 5: batches straddle epochs 0|1, 1|2, …
  Sampler sampler(37, 11);
  const std::vector<int64_t> drawn = Concatenate(Batches(sampler, 30, 5));  // 150 samples
  std::vector<int64_t> expected;
  for (int64_t epoch = 0; expected.size() < drawn.size(); ++epoch) {
    const auto order = sampler.EpochOrder(epoch);
    expected.insert(expected.end(), order.begin(), order.end());
  }
  expected.resize(drawn.size());
  EXPECT_EQ(drawn, expected);
  EXPECT_EQ(sampler.state(), (SamplerState{4, 150 - 4 * 37}));
}

TEST(Sampler, CrossingIntoTheNextEpochReshuffles) {
  Sampler sampler(10, 5);
  const auto order0 = sampler.EpochOrder(0), order1 = sampler.EpochOrder(1);
  EXPECT_NE(order0, order1);
  sampler.NextGlobalBatch(7);
  EXPECT_EQ(sampler.state(), (SamplerState{0, 7}));
  const auto batch = sampler.NextGlobalBatch(7);
  const std::vector<int64_t> expected = {order0[7], order0[8], order0[9], order1[0],
                                         order1[1], order1[2], order1[3]};
  EXPECT_EQ(batch, expected);
  EXPECT_EQ(sampler.state(), (SamplerState{1, 4}));
  // A batch larger than the data set spans several epochs.
  Sampler big(3, 5);
  EXPECT_EQ(big.NextGlobalBatch(8).size(), 8u);
  EXPECT_EQ(big.state(), (SamplerState{2, 2}));
  // An exactly consumed epoch is reported as the start of the next one.
  Sampler exact(6, 5);
  exact.NextGlobalBatch(6);
  EXPECT_EQ(exact.state(), (SamplerState{1, 0}));
}

TEST(Sampler, ReplicasPartitionTheGlobalBatchByStride) {
  Sampler sampler(50, 2);
  const auto global = sampler.NextGlobalBatch(12);
  std::multiset<int64_t> union_of_shares;
  for (int r = 0; r < 3; ++r) {
    const auto share = Sampler::ReplicaShare(global, r, 3);
    ASSERT_EQ(share.size(), 4u);
    for (size_t k = 0; k < share.size(); ++k) EXPECT_EQ(share[k], global[k * 3 + r]);
    union_of_shares.insert(share.begin(), share.end());
  }
  EXPECT_EQ(union_of_shares, std::multiset<int64_t>(global.begin(), global.end()));
  EXPECT_EQ(Sampler::ReplicaShare(global, 0, 1), global);
}

TEST(Sampler, ResumingFromASavedStateEqualsAnUninterruptedRun) {
  Sampler uninterrupted(23, 9);
  const auto all = Batches(uninterrupted, 9, 4);
  Sampler first(23, 9);
  Batches(first, 4, 4);
  const SamplerState saved = first.state();
  Sampler resumed(23, 9);
  ASSERT_TRUE(resumed.SetState(saved).ok());
  const auto rest = Batches(resumed, 5, 4);
  EXPECT_EQ(rest, std::vector<std::vector<int64_t>>(all.begin() + 4, all.end()));
}

TEST(Sampler, GlobalSequenceDoesNotDependOnTheBatchSplit) {
  // One run of batches of 6 and one of batches of 4 then 2 draw the same indices.
  Sampler a(31, 4), b(31, 4);
  std::vector<int64_t> drawn_a, drawn_b;
  for (int i = 0; i < 10; ++i) {
    const auto batch = a.NextGlobalBatch(6);
    drawn_a.insert(drawn_a.end(), batch.begin(), batch.end());
    for (int64_t size : {4, 2}) {
      const auto part = b.NextGlobalBatch(size);
      drawn_b.insert(drawn_b.end(), part.begin(), part.end());
    }
  }
  EXPECT_EQ(drawn_a, drawn_b);
  EXPECT_EQ(a.state(), b.state());
}

TEST(Sampler, SetStateValidatesAndNormalises) {
  Sampler sampler(10, 1);
  EXPECT_TRUE(sampler.SetState({2, 10}).ok());
  EXPECT_EQ(sampler.state(), (SamplerState{3, 0}));
  const absl::Status status = sampler.SetState({0, 11});
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_FALSE(sampler.SetState({-1, 0}).ok());
}

TEST(Sampler, UnshuffledEpochsAreInIndexOrder) {
  Sampler sampler(5, 99, /*shuffle=*/false);
  EXPECT_EQ(sampler.NextGlobalBatch(7), (std::vector<int64_t>{0, 1, 2, 3, 4, 0, 1}));
}

}  // namespace
}  // namespace tessera
