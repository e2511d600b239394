// The pieces config rules are written with, shared by runtime/config's rules
// for the shared sections and each model's own rules (models/<name>/).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "runtime/config/config.pb.h"

namespace tessera {

// "name=value", the form every message uses to point at a field; a long
// string value is cut to 120 characters so a huge value stays one line.
template <typename T>
std::string Field(absl::string_view name, T value) {
  return absl::StrCat(name, "=", value);
}
std::string Field(absl::string_view name, const std::string& value);

// Collects every failed rule, so a user fixes a config in one round trip.
class ConfigChecker {
 public:
  // Records `message` when `ok` is false. Write conditions so that NaN fails them.
  void Expect(bool ok, std::string message) {
    if (!ok) failures_.push_back(std::move(message));
  }
  // OK, or one UsageError with every failure joined by "; ".
  absl::Status Result() const;

 private:
  std::vector<std::string> failures_;
};

// The rules of the sections every model shares (parallel, train, optim,
// data, checkpoint, fault) for a run over `world_size` processes, and that
// a model is set. ValidateRunConfig is these alone; models/registry.h adds
// the model's own rules (ValidateRun).
void CheckSharedSections(const RunConfig& config, int world_size, ConfigChecker& check);

// The shared layout rules alone (ValidateLayout).
void CheckSharedLayout(const RunConfig& config, int world_size, ConfigChecker& check);

// The name of the model field set in `config` (a member of the `model`
// oneof, or an extension of RunConfig), or "" when none is.
std::string ModelFieldName(const RunConfig& config);

}  // namespace tessera
