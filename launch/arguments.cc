#include "launch/arguments.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

std::string ParsedArguments::Get(const std::string& name, const std::string& fallback) const {
  auto it = values.find(name);
  return it == values.end() ? fallback : it->second.back();
}

absl::StatusOr<int64_t> ParsedArguments::GetInt(const std::string& name, int64_t fallback) const {
  if (!values.count(name)) return fallback;
  int64_t value;
  if (!absl::SimpleAtoi(Get(name), &value)) {
    return UsageError(absl::StrCat("--", name, "=", Get(name), " is not an integer"));
  }
  return value;
}

absl::StatusOr<double> ParsedArguments::GetDouble(const std::string& name, double fallback) const {
  if (!values.count(name)) return fallback;
  double value;
  if (!absl::SimpleAtod(Get(name), &value) || !std::isfinite(value)) {
    return UsageError(absl::StrCat("--", name, "=", Get(name), " is not a finite number"));
  }
  return value;
}

absl::StatusOr<int64_t> ParsedArguments::GetIntInRange(const std::string& name, int64_t fallback,
                                                       int64_t lo, int64_t hi) const {
  auto value = GetInt(name, fallback);
  if (value.ok() && (*value < lo || *value > hi)) {
    return UsageError(absl::StrCat("--", name, "=", Get(name), " must be in [", lo, ", ", hi, "]"));
  }
  return value;
}

absl::Status ParsedArguments::ExpectNoPositional(const std::string& command) const {
  if (positional.empty()) return absl::OkStatus();
  return UsageError(absl::StrCat(command, ": unexpected argument \"", positional.front().substr(0, 120),
                                 "\" (options start with --; see --help)"));
}

absl::StatusOr<ParsedArguments> ParseArguments(const std::vector<std::string>& args,
                                               const std::set<std::string>& value_options,
                                               const std::set<std::string>& flag_options) {
  ParsedArguments parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      parsed.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    const size_t equals = name.find('=');
    const bool inline_value = equals != std::string::npos;
    if (inline_value) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    }
    if (flag_options.count(name)) {
      if (inline_value) return UsageError(absl::StrCat("--", name, " takes no value"));
      parsed.flags.insert(name);
    } else if (value_options.count(name)) {
      if (!inline_value) {
        if (i + 1 >= args.size()) return UsageError(absl::StrCat("--", name, " needs a value"));
        value = args[++i];
      }
      parsed.values[name].push_back(value);
    } else {
      return UsageError(absl::StrCat("unknown option --", name, " (see --help)"));
    }
  }
  return parsed;
}

}  // namespace tessera
