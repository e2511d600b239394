// tessera data import-movielens (data/movielens.h).
#pragma once

#include "absl/status/status.h"
#include "launch/arguments.h"

namespace tessera {

// Its usage text is part of `tessera data --help` (data_command.cc).
absl::Status ImportMovieLensCommand(const ParsedArguments& args);

}  // namespace tessera
