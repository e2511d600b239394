// Full-ranking evaluation metrics of a next-item recommender (the
// reference's eval: every item scored, the user's own history excluded).
//
// The target's rank is the number of candidate items scoring strictly
// higher than it: items of the user's history (other than the target
// itself) are not candidates. Ties count in the target's favour. Then
//   HR@K   = 1 if rank < K,  else 0
//   NDCG@K = 1 / log2(rank + 2) if rank < K, else 0
// (one relevant item, so the ideal DCG is 1).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessera::hstu {

// scores: [num_items]; excluded: item ids (any order, repeats and the target
// allowed; ids outside [0, num_items) ignored).
int64_t TargetRank(std::span<const float> scores, int64_t target,
                   std::span<const int64_t> excluded);

// The cut-offs every evaluation reports.
inline constexpr int64_t kRankCutoffs[] = {10, 50, 200};

// Sums over users of HR@K and NDCG@K for K in kRankCutoffs, and the users.
struct RankingSums {
  double hits[3] = {0, 0, 0};
  double ndcg[3] = {0, 0, 0};
  double users = 0;
  void Add(int64_t rank);
};

}  // namespace tessera::hstu
