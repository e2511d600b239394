// The tessera subcommands. Each returns the process exit code
// (docs/exit-codes in README: 0 ok, 2 usage/config, 3 data, 4 checkpoint,
// 5 communication, 6 numerical, 75 saved-and-requeue).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

int TrainCommand(const std::vector<std::string>& args);
int SampleCommand(const std::vector<std::string>& args);
int GenerateCommand(const std::vector<std::string>& args);
int DataCommand(const std::vector<std::string>& args);
int CkptCommand(const std::vector<std::string>& args);
int RecommendCommand(const std::vector<std::string>& args);
int DebugCommand(const std::vector<std::string>& args);

// Prints "tessera: error: <message>" to stderr and returns the status's exit code.
int ReportError(const absl::Status& status);

}  // namespace tessera
