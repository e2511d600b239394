#include "launch/rank_agreement.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "parallel/comm/mpi_check.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

// One "name\tvalue\n" line per field (names and text values hold no tabs
// or newlines: the text format escapes them).
std::string Serialize(const Fields& fields) {
  std::string out;
  for (const auto& [name, value] : fields) absl::StrAppend(&out, name, "\t", value, "\n");
  return out;
}

Fields Deserialize(const std::string& text) {
  Fields fields;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> field = absl::StrSplit(line, absl::MaxSplits('\t', 1));
    fields.push_back(std::move(field));
  }
  return fields;
}

// Rank 0's serialized fields, on every rank.
absl::StatusOr<std::string> BroadcastFromRankZero(const std::string& mine, int world_rank) {
  long long length = world_rank == 0 ? static_cast<long long>(mine.size()) : 0;
  TESSERA_MPI(MPI_Bcast(&length, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD));
  std::string text = world_rank == 0 ? mine : std::string(static_cast<size_t>(length), '\0');
  TESSERA_MPI(MPI_Bcast(text.data(), static_cast<int>(length), MPI_CHAR, 0, MPI_COMM_WORLD));
  return text;
}

// Index of the first field where `a` and `b` differ; INT_MAX when none.
int FirstDifference(const Fields& a, const Fields& b) {
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (i >= a.size() || i >= b.size() || a[i] != b[i]) return static_cast<int>(i);
  }
  return INT_MAX;
}

std::string Describe(const Fields& fields, int index) {
  if (index >= static_cast<int>(fields.size())) return "(no more fields)";
  constexpr size_t kShown = 300;  // a message of one readable line
  const std::string& value = fields[index].second;
  return absl::StrCat(fields[index].first, " = ", value.substr(0, kShown),
                      value.size() > kShown ? "…" : "");
}

}  // namespace

Fields AgreementFields(const RunConfig& config) {
  Fields fields;
  std::vector<std::string> scope;
  for (absl::string_view raw : absl::StrSplit(RunConfigToText(config), '\n')) {
    const absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty()) continue;
    if (absl::EndsWith(line, "{")) {
      scope.emplace_back(absl::StripAsciiWhitespace(absl::StripSuffix(line, "{")));
    } else if (line == "}") {
      if (!scope.empty()) scope.pop_back();
    } else {
      std::pair<std::string, std::string> field = absl::StrSplit(line, absl::MaxSplits(": ", 1));
      scope.push_back(field.first);
      fields.emplace_back(absl::StrJoin(scope, "."), field.second);
      scope.pop_back();
    }
  }
  fields.emplace_back("build.compiler", __VERSION__);
  fields.emplace_back("build.cplusplus", absl::StrCat(__cplusplus));
  return fields;
}

absl::Status AgreeOnRunConfig(const RunConfig& config, int world_rank, int world_size) {
  const Fields mine = AgreementFields(config);
  TESSERA_ASSIGN_OR_RETURN(const std::string text, BroadcastFromRankZero(Serialize(mine), world_rank));
  const Fields rank_zero = Deserialize(text);
  struct {
    int index;
    int rank;
  } first = {FirstDifference(rank_zero, mine), world_rank};
  TESSERA_MPI(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_2INT, MPI_MINLOC, MPI_COMM_WORLD));
  if (first.index == INT_MAX) return absl::OkStatus();
  char theirs[1024] = {};
  if (world_rank == first.rank) {
    std::strncpy(theirs, Describe(mine, first.index).c_str(), sizeof(theirs) - 1);
  }
  TESSERA_MPI(MPI_Bcast(theirs, sizeof(theirs), MPI_CHAR, first.rank, MPI_COMM_WORLD));
  return UsageError(absl::StrFormat(
      "the %d ranks do not run the same config and build: rank 0 has %s, rank %d has %s "
      "(the first field that differs; launch every rank with the same binary, config and --set)",
      world_size, Describe(rank_zero, first.index), first.rank, theirs));
}

}  // namespace tessera
