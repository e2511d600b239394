#include "data/synthetic_interactions.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "data/sequence_writers.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

constexpr float kFollow = 0.85f, kSwitch = 0.05f;  // the rest is noise
constexpr int64_t kFirstTimestamp = 1500000000, kTimestampSpread = 10000000, kMaxGap = 3600;

absl::Status CheckSpec(const ClusteredInteractionsSpec& spec) {
  if (spec.num_users < 0 || spec.num_clusters < 1 || spec.num_items < spec.num_clusters ||
      spec.min_length < 1 || spec.max_length < spec.min_length) {
    return UsageError(absl::StrCat(
        "synthetic interactions: need users >= 0, 1 <= clusters <= items, 1 <= min_length <= "
        "max_length; got ",
        spec.num_users, ", ", spec.num_clusters, ", ", spec.num_items, ", ", spec.min_length, ", ",
        spec.max_length));
  }
  return absl::OkStatus();
}

struct History {
  std::vector<int64_t> items, timestamps;
  std::vector<float> ratings;
};

// Items of cluster c are c, c + C, c + 2C, …: `size` of them.
int64_t ClusterSize(const ClusteredInteractionsSpec& spec, int64_t cluster) {
  return (spec.num_items - cluster + spec.num_clusters - 1) / spec.num_clusters;
}

History UserHistory(const ClusteredInteractionsSpec& spec, int64_t user) {
  Rng rng(spec.seed, static_cast<uint64_t>(user));
  const auto below = [&rng](int64_t n) {
    return static_cast<int64_t>(rng.Below(static_cast<uint64_t>(n)));
  };
  const int64_t length = spec.min_length + below(spec.max_length - spec.min_length + 1);
  int64_t cluster = below(spec.num_clusters);
  int64_t position = below(ClusterSize(spec, cluster));
  int64_t time = kFirstTimestamp + below(kTimestampSpread);
  History history;
  for (int64_t i = 0; i < length; ++i) {
    const float draw = rng.Uniform();
    int64_t item;
    float rating;
    if (i == 0 || draw < kFollow + kSwitch) {
      if (i > 0 && draw >= kFollow) {
        cluster = below(spec.num_clusters);
        position = below(ClusterSize(spec, cluster));
      } else if (i > 0) {
        position = (position + 1) % ClusterSize(spec, cluster);
      }
      item = cluster + position * spec.num_clusters;
      rating = static_cast<float>(4 + below(2));
    } else {
      item = below(spec.num_items);
      rating = static_cast<float>(1 + below(3));
    }
    history.items.push_back(item);
    history.timestamps.push_back(time);
    history.ratings.push_back(rating);
    time += 1 + below(kMaxGap);
  }
  return history;
}

}  // namespace

absl::Status SynthesizeInteractions(const std::string& out_dir,
                                    const ClusteredInteractionsSpec& spec) {
  TESSERA_RETURN_IF_ERROR(CheckSpec(spec));
  TESSERA_ASSIGN_OR_RETURN(auto builder,
                           InteractionsDatasetBuilder::Create(out_dir, spec.users_per_shard, true));
  for (int64_t user = 0; user < spec.num_users; ++user) {
    const History history = UserHistory(spec, user);
    TESSERA_RETURN_IF_ERROR(builder.Add(user, history.items, history.timestamps, history.ratings));
  }
  return builder.Finish({{"num_items", absl::StrCat(spec.num_items)},
                         {"num_clusters", absl::StrCat(spec.num_clusters)},
                         {"task", "clustered"}},
                        absl::StrCat("synthetic clustered interactions, seed ", spec.seed));
}

}  // namespace tessera
