#include "models/registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/dit_moe/family.h"
#include "models/hstu/family.h"
#include "models/mamba_hybrid/family.h"
#include "runtime/base/errors.h"

namespace tessera {
namespace {

std::vector<ModelFamily>& Families() {
  // One line per model family.
  static auto* families = new std::vector<ModelFamily>{
      dit_moe::Family(),
      hstu::Family(),
      mamba_hybrid::Family(),
  };
  return *families;
}

std::string KnownNames() {
  std::vector<std::string> names;
  for (const ModelFamily& family : Families()) names.push_back(family.name);
  return absl::StrJoin(names, ", ");
}

}  // namespace

const std::vector<ModelFamily>& ModelFamilies() { return Families(); }

bool RegisterModelFamily(ModelFamily family) {
  for (const ModelFamily& known : Families()) {
    if (known.name == family.name) return false;
  }
  Families().push_back(std::move(family));
  return true;
}

absl::StatusOr<const ModelFamily*> FindModelFamily(const RunConfig& config) {
  const std::string name = ModelFieldName(config);
  if (name.empty()) {
    return UsageError(absl::StrCat("the config names no model (known: ", KnownNames(), ")"));
  }
  for (const ModelFamily& family : Families()) {
    if (family.name == name) return &family;
  }
  return UsageError(absl::StrCat("model.", name, ": no such model family in this build (known: ",
                                 KnownNames(), ")"));
}

absl::Status ValidateRun(const RunConfig& config, int world_size) {
  if (world_size < 1) {
    return UsageError(absl::StrCat("world size ", world_size, " must be >= 1"));
  }
  ConfigChecker check;
  CheckSharedSections(config, world_size, check);
  const std::string name = ModelFieldName(config);
  if (!name.empty()) {
    absl::StatusOr<const ModelFamily*> family = FindModelFamily(config);
    check.Expect(family.ok(), std::string(family.status().message()));
    if (family.ok() && (*family)->validate) (*family)->validate(config, world_size, check);
  }
  return check.Result();
}

}  // namespace tessera
