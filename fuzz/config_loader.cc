// Fuzz target: the run config loader (runtime/config/config.h).
//
// Input: a text-format RunConfig, optionally followed by a line "---" and one
// `--set` assignment per line. The config is parsed, the overrides applied
// in order, and the result validated for world sizes 1, 2 and 8; a config
// that validates must survive RunConfigToText: the printed text (every field,
// defaults filled in) parses back to a config that prints the same, and its
// derived sizes must be positive.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "runtime/config/config.h"

namespace {

void CheckValidConfig(const tessera::RunConfig& config, int world_size) {
  const std::string text = tessera::RunConfigToText(config);
  absl::StatusOr<tessera::RunConfig> again = tessera::ParseRunConfig(text, "roundtrip.textproto");
  if (!again.ok() || tessera::RunConfigToText(*again) != text) {
    __builtin_trap();  // the printed config of a run must load back as itself
  }
  if (tessera::DataParallelSize(config, world_size) <= 0 ||
      tessera::MicroBatch(config, world_size) <= 0) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  absl::string_view text = input, overrides;
  if (const size_t cut = input.find("\n---\n"); cut != absl::string_view::npos) {
    text = input.substr(0, cut);
    overrides = input.substr(cut + 5);
  }
  absl::StatusOr<tessera::RunConfig> config = tessera::ParseRunConfig(text, "fuzz.textproto");
  if (!config.ok()) return 0;
  std::vector<std::string> assignments;
  for (absl::string_view line : absl::StrSplit(overrides, '\n', absl::SkipEmpty())) {
    assignments.emplace_back(line);
  }
  if (!tessera::ApplyOverrides(&*config, assignments).ok()) return 0;
  for (int world_size : {1, 2, 8}) {
    if (tessera::ValidateRunConfig(*config, world_size).ok()) {
      CheckValidConfig(*config, world_size);
    }
  }
  return 0;
}
