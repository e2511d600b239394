// MovieLens ratings -> an interactions data set (docs/data-format.md,
// "Commands"; docs/hstu.md, "MovieLens").
//
// Formats: ML-1M's ratings.dat (`UserID::MovieID::Rating::Timestamp`, no
// header) and ML-20M's / ml-latest's ratings.csv (`userId,movieId,rating,
// timestamp` with that header line; the dslabs export has the same shape).
// "auto" picks by the file name's extension.
//
// Each user's events are sorted by timestamp, lines of equal time kept in
// file order (the files list users' ratings in no time order; the number of
// users whose lines were out of time order is reported). Movie ids become
// dense item ids 0 .. num_items - 1 in increasing movie id order, over the
// kept users' events; `item_ids.txt` in the output holds the movie id of
// item i on line i + 1. Users with fewer than `min_events` ratings are
// dropped (counted). The data set holds whole histories: the leave-one-out
// split (last event test, second-to-last validation) is taken at read time
// (model.hstu.holdout).
//
// Errors: an unknown format or an unreadable file is a UsageError (exit 2);
// a malformed line (wrong field count, a field that is not a number, a
// negative id or timestamp, a non-finite rating, a line over 4096 bytes) is a
// DataError (exit 3) naming the file and line. Empty lines are skipped.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace tessera {

struct MovieLensImportOptions {
  std::string input;              // ratings.dat or ratings.csv
  std::string out_dir;
  std::string format = "auto";    // "auto", "dat" or "csv"
  int64_t min_events = 2;         // fewer: the user is dropped
  int64_t users_per_shard = 10000;
};

struct MovieLensImportSummary {
  int64_t lines = 0;           // ratings read
  int64_t users = 0;           // kept
  int64_t dropped_users = 0;   // with fewer than min_events ratings
  int64_t reordered_users = 0; // whose lines were not in time order
  int64_t items = 0;           // num_items of the data set
  int64_t events = 0;          // written
};

absl::StatusOr<MovieLensImportSummary> ImportMovieLens(const MovieLensImportOptions& options);

}  // namespace tessera
