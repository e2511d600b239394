#include "models/hstu/ranking.h"

#include <cmath>

namespace tessera::hstu {

int64_t TargetRank(std::span<const float> scores, int64_t target,
                   std::span<const int64_t> excluded) {
  const auto n = static_cast<int64_t>(scores.size());
  const float score = scores[target];
  int64_t above = 0;
  for (float s : scores) above += s > score;
  // Excluded items above the target do not count; each counts once.
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (int64_t item : excluded) {
    if (item < 0 || item >= n || item == target || seen[item]) continue;
    seen[item] = true;
    above -= scores[item] > score;
  }
  return above;
}

void RankingSums::Add(int64_t rank) {
  for (int k = 0; k < 3; ++k) {
    if (rank < kRankCutoffs[k]) {
      hits[k] += 1;
      ndcg[k] += 1.0 / std::log2(static_cast<double>(rank) + 2.0);
    }
  }
  users += 1;
}

}  // namespace tessera::hstu
