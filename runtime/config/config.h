// Loading, overriding and validating the run config (runtime/config/config.proto).
//
// A run starts from one text-format file (configs/*.textproto), applies the
// command line's `--set a.b.c=value` overrides in order, and validates the
// result against the world size before any other work. Every failure is a
// UsageError (exit code 2) whose message names the file position or the field
// and value involved. docs/config.md documents every field and rule here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/config/config.pb.h"

namespace tessera {

// Parses text format. Errors read "<filename>:<line>:<column>: <problem>"
// (1-based), e.g. an unknown field or a value of the wrong type.
absl::StatusOr<RunConfig> ParseRunConfig(absl::string_view text, absl::string_view filename);

// Reads and parses `path`; a missing or unreadable file is a UsageError naming it.
absl::StatusOr<RunConfig> LoadRunConfig(const std::string& path);

// Applies one "a.b.c=value" assignment. The path walks messages by field name;
// the oneof `model` may be named in the path (`model.dit_moe.depth=2`, which
// selects dit_moe and clears any other model) or skipped (`dit_moe.depth=2`).
// Values: integers, floats, bools (true/false/1/0), strings (taken verbatim;
// one pair of surrounding double quotes is removed), enums by name (case
// insensitive). Repeated fields are not supported. Errors name the path,
// list the valid fields at the level that failed, or name the field and the
// value that did not parse.
absl::Status ApplyOverride(RunConfig* config, absl::string_view assignment);
// Applies `assignments` in order; stops at the first failure.
absl::Status ApplyOverrides(RunConfig* config, const std::vector<std::string>& assignments);

// Checks every rule of docs/config.md for a run over `world_size` processes.
// All failures are reported together, joined by "; ", as one UsageError, e.g.
// "model.dit_moe.num_heads=5 must divide model.dit_moe.hidden_size=384".
absl::Status ValidateRunConfig(const RunConfig& config, int world_size);

// The subset of ValidateRunConfig about the layout: parallel sizes against
// the world size, the model's splits over tp, sp, ep and etp, and the global
// batch over dp. The process mesh (parallel/mesh) relies on exactly these.
absl::Status ValidateLayout(const RunConfig& config, int world_size);

// Text format with every field present (unset fields show their defaults),
// for <run_dir>/config.textproto. Of the model oneof only the chosen member
// is printed.
std::string RunConfigToText(const RunConfig& config);

// world_size / (tp * sp): the number of data-parallel replicas.
int64_t DataParallelSize(const RunConfig& config, int world_size);
// Samples per forward on one replica: train.micro_batch, or
// global_batch / DataParallelSize when micro_batch is 0.
int64_t MicroBatch(const RunConfig& config, int world_size);

}  // namespace tessera
