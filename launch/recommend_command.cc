// tessera recommend: the top items for one user of an HSTU training run's
// data, scored with the run's final weights (models/hstu/scoring.h).
#include <cstdio>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "data/interaction_reader.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "launch/model_setup.h"
#include "models/hstu/family.h"
#include "models/hstu/scoring.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {
constexpr char kRecommendUsage[] = R"(usage: tessera recommend --run RUN_DIR --user ID [options]

Lists the best items for a user's whole history with the weights an HSTU
training run saved (RUN_DIR/weights.h5) and the model in
RUN_DIR/config.textproto: the output at the history's last position scored
by cosine similarity against every item, the user's own items left out.

  --run DIR      a training run directory (train.run_dir) of model.hstu
  --user ID      a user id of the data set (its user_ids)
  --data DIR     the interactions data set to find the user in (default the
                 run's data.dir)
  --top K        items to list, 1 to 10000 (default 10)
  --threads N    CPU threads, 0 to 1024 (default 0: all cores)

Items are printed as item ids and, when DATA/item_ids.txt exists (written by
tessera data import-movielens), as the original movie ids. Errors exit 2
(usage, an unknown user), 3 (data), 4 (weights).
)";

absl::StatusOr<RunConfig> LoadRecommendConfig(const std::string& run_dir) {
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(run_dir + "/config.textproto"));
  config.clear_parallel();  // the single-process model
  config.clear_fault();
  absl::Status valid = ValidateRun(config, 1);
  if (!valid.ok()) {
    return UsageError(absl::StrCat(run_dir, "/config.textproto: ", valid.message()));
  }
  if (!config.has_hstu()) {
    return UsageError(absl::StrCat("recommend: ", run_dir, "/config.textproto trains model.",
                                   ModelFieldName(config), "; tessera recommend needs model.hstu"));
  }
  return config;
}

struct History {
  std::vector<int64_t> items, timestamps;
};

// The whole history of user `id`, reading the data set in index order.
absl::StatusOr<History> FindUser(const std::string& dir, int64_t id, int64_t num_items) {
  InteractionReaderOptions options;
  options.dir = dir;
  options.global_batch = 256;
  options.shuffle = false;
  options.num_items = num_items;
  TESSERA_ASSIGN_OR_RETURN(auto reader, InteractionReader::Open(options));
  for (int64_t seen = 0; seen < reader->num_samples(); seen += options.global_batch) {
    TESSERA_ASSIGN_OR_RETURN(const InteractionBatch batch, reader->Next());
    const int64_t* offsets = batch.offsets.data<int64_t>();
    for (int64_t u = 0; u < batch.user_ids.numel(); ++u) {
      if (batch.user_ids.data<int64_t>()[u] != id) continue;
      History h;
      h.items.assign(batch.item_ids.data<int64_t>() + offsets[u],
                     batch.item_ids.data<int64_t>() + offsets[u + 1]);
      h.timestamps.assign(batch.timestamps.data<int64_t>() + offsets[u],
                          batch.timestamps.data<int64_t>() + offsets[u + 1]);
      if (h.items.empty()) break;
      return h;
    }
  }
  return UsageError(absl::StrCat("recommend: data set \"", dir, "\" has no user ", id,
                                 " with at least one event"));
}

// DATA/item_ids.txt (line i + 1: item i's original id), or empty.
std::vector<std::string> ItemNames(const std::string& dir) {
  std::vector<std::string> names;
  std::ifstream in(dir + "/item_ids.txt");
  for (std::string line; std::getline(in, line);) names.push_back(line);
  return names;
}

absl::Status Recommend(const ParsedArguments& args) {
  TESSERA_RETURN_IF_ERROR(args.ExpectNoPositional("recommend"));
  if (!args.Has("run") || !args.Has("user")) {
    return UsageError("recommend: --run RUN_DIR and --user ID are required (see --help)");
  }
  const std::string run_dir = args.Get("run");
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRecommendConfig(run_dir));
  TESSERA_ASSIGN_OR_RETURN(const int64_t user, args.GetInt("user", 0));
  TESSERA_ASSIGN_OR_RETURN(const int64_t top, args.GetIntInRange("top", 10, 1, 10000));
  TESSERA_ASSIGN_OR_RETURN(const int64_t threads, args.GetIntInRange("threads", 0, 0, 1024));
  const std::string data = args.Get("data", config.data().dir());
  config.mutable_train()->set_threads(static_cast<int>(threads));
  ConfigureThreads(config);
  TESSERA_ASSIGN_OR_RETURN(auto built, hstu::HstuModel::Build(config));
  TESSERA_RETURN_IF_ERROR(
      LoadWeights(run_dir + "/weights.h5", built->store(), built->SparseWeights()));
  hstu::Hstu& model = built->model();
  TESSERA_ASSIGN_OR_RETURN(const History history, FindUser(data, user, model.num_items()));
  Arena arena;
  const hstu::UserHistory query{history.items, history.timestamps, history.timestamps.back()};
  TESSERA_ASSIGN_OR_RETURN(
      const std::vector<float> scores,
      hstu::ScoreItems(model, arena, built->table().local_rows().data(), {&query, 1}));
  const std::vector<int64_t> best = hstu::TopItems(scores, history.items, top);
  const std::vector<std::string> names = ItemNames(data);
  std::printf("user %lld: %zu events; top %zu items (rank, item, %sscore):\n",
              static_cast<long long>(user), history.items.size(), best.size(),
              names.empty() ? "" : "original id, ");
  for (size_t r = 0; r < best.size(); ++r) {
    const std::string name =
        best[r] < static_cast<int64_t>(names.size()) ? names[best[r]] + " " : "";
    std::printf("%3zu %8lld %s%.4f\n", r + 1, static_cast<long long>(best[r]), name.c_str(),
                scores[best[r]]);
  }
  return absl::OkStatus();
}
}  // namespace

int RecommendCommand(const std::vector<std::string>& raw) {
  auto args = ParseArguments(raw, {"run", "user", "data", "top", "threads"}, {"help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help")) {
    std::fputs(kRecommendUsage, stdout);
    return 0;
  }
  const absl::Status status = Recommend(*args);
  return status.ok() ? 0 : ReportError(status);
}

}  // namespace tessera
