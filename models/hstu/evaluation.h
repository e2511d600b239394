// Leave-one-out evaluation of an HSTU over every user of an interactions
// data set: the validation split ranks each user's second-to-last event
// given the events before it, the test split its last event given all the
// others; full ranking over every item, the user's history excluded
// (ranking.h). Users are read in index order; a user whose target has no
// event before it counts for nothing.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/hstu/scoring.h"
#include "runtime/config/config.pb.h"

namespace tessera::hstu {

struct EvaluationOptions {
  std::string dir;                // an interactions data set
  std::string field = "data.dir";  // the config field it came from (messages)
  int64_t batch_users = 128;      // users per forward
  int64_t max_users = 0;          // the first max_users users; 0: all
  int prefetch = 4;
  int replica = 0, num_replicas = 1;  // this replica takes every R-th user
};

// `table`: the whole item table [num_items, D] (host memory).
absl::StatusOr<RankingSums> EvaluateSplit(Hstu& model, const float* table,
                                          const EvaluationOptions& options, Split split);

// `"<prefix>hr@10":…,"<prefix>ndcg@10":…, …` for every cut-off, as means
// over the users, and `"<prefix>users":N`.
std::string RankingJsonFields(const RankingSums& sums, const std::string& prefix);

}  // namespace tessera::hstu
