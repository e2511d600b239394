// Full-ranking metrics against hand-worked rankings.
#include "models/hstu/ranking.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace tessera::hstu {
namespace {

TEST(Ranking, TargetRankCountsHigherScoringItemsOutsideTheHistory) {
  //                            0    1    2    3    4    5    6
  const std::vector<float> s = {0.9, 0.1, 0.5, 0.7, 0.5, 0.8, 0.2};
  // Target 2 (0.5): above it 0 (0.9), 3 (0.7), 5 (0.8); 4 ties (not above).
  EXPECT_EQ(TargetRank(s, 2, {}), 3);
  // History {0, 5, 5, 2, 9, -1}: 0 and 5 leave (5 once), the target stays a
  // candidate, 9 and -1 lie outside the table.
  EXPECT_EQ(TargetRank(s, 2, std::vector<int64_t>{0, 5, 5, 2, 9, -1}), 1);
  EXPECT_EQ(TargetRank(s, 0, std::vector<int64_t>{1, 6}), 0);  // the best item
  EXPECT_EQ(TargetRank(s, 1, std::vector<int64_t>{}), 6);      // the worst
  EXPECT_EQ(TargetRank(s, 1, std::vector<int64_t>{6, 4}), 4);  // two of the six above it leave
}

TEST(Ranking, HitRateAndNdcgAtTenFiftyAndTwoHundred) {
  RankingSums sums;
  sums.Add(0);    // 1 everywhere, NDCG 1/log2(2) = 1
  sums.Add(9);    // in the top 10: NDCG 1/log2(11)
  sums.Add(10);   // misses @10, NDCG@50 1/log2(12)
  sums.Add(199);  // only @200: 1/log2(201)
  sums.Add(200);  // nowhere
  EXPECT_EQ(sums.users, 5);
  EXPECT_EQ(sums.hits[0], 2);
  EXPECT_EQ(sums.hits[1], 3);
  EXPECT_EQ(sums.hits[2], 4);
  EXPECT_NEAR(sums.ndcg[0], 1 + 1 / std::log2(11.0), 1e-12);
  EXPECT_NEAR(sums.ndcg[1], 1 + 1 / std::log2(11.0) + 1 / std::log2(12.0), 1e-12);
  EXPECT_NEAR(sums.ndcg[2], 1 + 1 / std::log2(11.0) + 1 / std::log2(12.0) + 1 / std::log2(201.0),
              1e-12);
}

}  // namespace
}  // namespace tessera::hstu
