#include "data/movielens.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "data/sequence_writers.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

constexpr size_t kMaxLineBytes = 4096;
constexpr char kCsvHeader[] = "userId,movieId,rating,timestamp";

struct Rating {
  int64_t user, movie, timestamp, line;
  float rating;
};

absl::StatusOr<std::string> ResolveFormat(const MovieLensImportOptions& options) {
  std::string format = options.format;
  if (format == "auto") {
    if (absl::EndsWith(options.input, ".dat")) format = "dat";
    if (absl::EndsWith(options.input, ".csv")) format = "csv";
    if (format == "auto") {
      return UsageError(absl::StrCat("data import-movielens: cannot tell the format of \"",
                                     options.input,
                                     "\" from its name (.dat or .csv); pass --format dat|csv"));
    }
  }
  if (format != "dat" && format != "csv") {
    return UsageError(absl::StrCat("data import-movielens: --format ", format,
                                   " is unknown (auto, dat, csv)"));
  }
  return format;
}

// One line's four fields, or a DataError naming file:line.
absl::StatusOr<Rating> ParseLine(absl::string_view line, bool dat, const std::string& file,
                                 int64_t number) {
  const auto where = [&](absl::string_view what) {
    return DataError(absl::StrCat(file, ":", number, ": ", what, " in \"",
                                  line.substr(0, 120), "\""));
  };
  std::vector<absl::string_view> fields;
  if (dat) {
    fields = absl::StrSplit(line, "::");
  } else {
    fields = absl::StrSplit(line, ',');
  }
  if (fields.size() != 4) {
    return where(absl::StrCat("expected 4 fields separated by ", dat ? "\"::\"" : "\",\"",
                              ", got ", fields.size()));
  }
  Rating r;
  r.line = number;
  const char* names[] = {"user id", "movie id", "rating", "timestamp"};
  int64_t* ints[] = {&r.user, &r.movie, nullptr, &r.timestamp};
  for (int f = 0; f < 4; ++f) {
    const bool ok = ints[f] != nullptr ? absl::SimpleAtoi(fields[f], ints[f]) && *ints[f] >= 0
                                       : absl::SimpleAtof(fields[f], &r.rating) &&
                                             std::isfinite(r.rating);
    if (!ok) {
      return where(absl::StrCat("the ", names[f], " \"", fields[f].substr(0, 40), "\" is not a ",
                                ints[f] != nullptr ? "non-negative integer" : "finite number"));
    }
  }
  return r;
}

absl::StatusOr<std::vector<Rating>> ReadRatings(const std::string& file, bool dat) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return UsageError(absl::StrCat("data import-movielens: cannot open \"", file,
                                   "\": ", std::strerror(errno)));
  }
  std::vector<Rating> ratings;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > kMaxLineBytes) {
      return DataError(absl::StrCat(file, ":", number, ": a line of more than ", kMaxLineBytes,
                                    " bytes"));
    }
    if (line.empty()) continue;
    if (!dat && number == 1) {
      if (line == kCsvHeader) continue;
      return DataError(absl::StrCat(file, ":1: expected the header \"", kCsvHeader, "\", got \"",
                                    line.substr(0, 120), "\""));
    }
    TESSERA_ASSIGN_OR_RETURN(Rating r, ParseLine(line, dat, file, number));
    ratings.push_back(r);
  }
  if (in.bad()) return DataError(absl::StrCat(file, ": read error"));
  return ratings;
}

}  // namespace

absl::StatusOr<MovieLensImportSummary> ImportMovieLens(const MovieLensImportOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(const std::string format, ResolveFormat(options));
  TESSERA_ASSIGN_OR_RETURN(std::vector<Rating> ratings,
                           ReadRatings(options.input, format == "dat"));
  MovieLensImportSummary summary;
  summary.lines = static_cast<int64_t>(ratings.size());
  if (ratings.empty()) return DataError(absl::StrCat(options.input, ": no ratings"));
  // Users in increasing id, each user's events by time, then by line.
  std::map<int64_t, bool> out_of_order;
  for (size_t i = 1; i < ratings.size(); ++i) {
    const Rating& a = ratings[i - 1];
    if (a.user == ratings[i].user && a.timestamp > ratings[i].timestamp) out_of_order[a.user] = true;
  }
  std::sort(ratings.begin(), ratings.end(), [](const Rating& a, const Rating& b) {
    if (a.user != b.user) return a.user < b.user;
    return a.timestamp != b.timestamp ? a.timestamp < b.timestamp : a.line < b.line;
  });
  // Drop short users, then number the kept movies densely.
  std::vector<Rating> kept;
  std::map<int64_t, int64_t> item_of_movie;
  for (size_t begin = 0, end; begin < ratings.size(); begin = end) {
    for (end = begin; end < ratings.size() && ratings[end].user == ratings[begin].user; ++end) {
    }
    if (static_cast<int64_t>(end - begin) < options.min_events) {
      ++summary.dropped_users;
      continue;
    }
    summary.reordered_users += out_of_order.count(ratings[begin].user);
    for (size_t i = begin; i < end; ++i) {
      kept.push_back(ratings[i]);
      item_of_movie[ratings[i].movie] = 0;
    }
  }
  if (kept.empty()) {
    return DataError(absl::StrCat(options.input, ": no user has ", options.min_events,
                                  " or more ratings"));
  }
  std::string item_list;
  for (auto& [movie, item] : item_of_movie) {
    item = summary.items++;
    absl::StrAppend(&item_list, movie, "\n");
  }
  TESSERA_ASSIGN_OR_RETURN(auto builder, InteractionsDatasetBuilder::Create(
                                             options.out_dir, options.users_per_shard, true));
  for (size_t begin = 0, end; begin < kept.size(); begin = end) {
    std::vector<int64_t> items, times;
    std::vector<float> stars;
    for (end = begin; end < kept.size() && kept[end].user == kept[begin].user; ++end) {
      items.push_back(item_of_movie[kept[end].movie]);
      times.push_back(kept[end].timestamp);
      stars.push_back(kept[end].rating);
    }
    TESSERA_RETURN_IF_ERROR(builder.Add(kept[begin].user, items, times, stars));
    ++summary.users;
    summary.events += static_cast<int64_t>(items.size());
  }
  TESSERA_RETURN_IF_ERROR(builder.Finish(
      {{"num_items", absl::StrCat(summary.items)},
       {"item_id_map", "item_ids.txt"},
       {"split", "leave-one-out at read time: last event test, second-to-last validation"}},
      absl::StrCat("MovieLens ", options.input)));
  const std::string map_path = options.out_dir + "/item_ids.txt";
  std::ofstream map(map_path);
  map << item_list;
  map.close();
  if (!map) return UsageError(absl::StrCat("cannot write ", map_path));
  return summary;
}

}  // namespace tessera
