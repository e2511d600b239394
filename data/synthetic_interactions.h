// Synthetic interactions data sets with a planted structure a recommender can
// learn (docs/data-format.md, "Synthetic data").
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace tessera {

// Items [0, num_items) fall into num_clusters hidden clusters (item i in
// cluster i % num_clusters), each an ordered cycle of its items. A user starts
// at a random item of a random cluster; each next event is, with probability
//   0.85  the next item of the current cluster's cycle,
//   0.05  a random item of a new random cluster (the user switches),
//   0.10  a uniformly random item (noise, the cluster is kept).
// Timestamps start in [1.5e9, 1.5e9 + 1e7) seconds and grow by 1 to 3600 s
// per event. Ratings: 4 or 5 for cluster moves, 1 to 3 for noise. History
// lengths are uniform in [min_length, max_length]; user u has id u and depends
// only on (seed, u).
struct ClusteredInteractionsSpec {
  int64_t num_users = 1000;
  int64_t num_items = 1000;
  int64_t num_clusters = 10;
  int64_t min_length = 5, max_length = 50;
  uint64_t seed = 0;
  int64_t users_per_shard = 10000;
};
absl::Status SynthesizeInteractions(const std::string& out_dir,
                                    const ClusteredInteractionsSpec& spec);

}  // namespace tessera
