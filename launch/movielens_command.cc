#include "launch/movielens_command.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "data/movielens.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

absl::Status ImportMovieLensCommand(const ParsedArguments& args) {
  if (!args.Has("input") || !args.Has("out")) {
    return UsageError("data import-movielens: --input FILE and --out DIR are required");
  }
  TESSERA_RETURN_IF_ERROR(args.ExpectNoPositional("data import-movielens"));
  MovieLensImportOptions options;
  options.input = args.Get("input");
  options.out_dir = args.Get("out");
  options.format = args.Get("format", "auto");
  TESSERA_ASSIGN_OR_RETURN(options.min_events,
                           args.GetIntInRange("min-events", 2, 1, int64_t{1} << 24));
  TESSERA_ASSIGN_OR_RETURN(options.users_per_shard,
                           args.GetIntInRange("shard-size", 10000, 1, int64_t{1} << 24));
  TESSERA_ASSIGN_OR_RETURN(const MovieLensImportSummary s, ImportMovieLens(options));
  std::printf(
      "imported %lld ratings from %s: %lld users (%lld with fewer than %lld ratings dropped, "
      "%lld listed out of time order and sorted), %lld events, num_items %lld -> %s\n",
      static_cast<long long>(s.lines), options.input.c_str(), static_cast<long long>(s.users),
      static_cast<long long>(s.dropped_users), static_cast<long long>(options.min_events),
      static_cast<long long>(s.reordered_users), static_cast<long long>(s.events),
      static_cast<long long>(s.items), options.out_dir.c_str());
  return absl::OkStatus();
}

}  // namespace tessera
