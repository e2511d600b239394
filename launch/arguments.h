// A small command-line parser for the subcommands: `--name value`,
// `--name=value` and boolean `--flag`, with errors that name the option.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

struct ParsedArguments {
  std::map<std::string, std::vector<std::string>> values;  // option -> values in order
  std::set<std::string> flags;                              // boolean options given
  std::vector<std::string> positional;

  bool Has(const std::string& name) const { return values.count(name) || flags.count(name); }
  // The last value of `name`, or `fallback`.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  // The value in [lo, hi], else a UsageError naming the range.
  absl::StatusOr<int64_t> GetIntInRange(const std::string& name, int64_t fallback, int64_t lo,
                                        int64_t hi) const;
  // A finite number ("nan" and "inf" are UsageErrors).
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // UsageError naming the first positional argument when `command` takes none.
  absl::Status ExpectNoPositional(const std::string& command) const;
};

// `value_options`: options that take a value; `flag_options`: boolean ones.
// Anything else starting with "--" is a UsageError naming it.
absl::StatusOr<ParsedArguments> ParseArguments(const std::vector<std::string>& args,
                                               const std::set<std::string>& value_options,
                                               const std::set<std::string>& flag_options);

}  // namespace tessera
