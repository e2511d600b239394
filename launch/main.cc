// tessera: train, sample and manage data for DiT-MoE (and, later, Mamba-2
// hybrids and HSTU) on one process or many.
#include <cstdio>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "launch/threading.h"
#include "runtime/base/errors.h"
#include "runtime/train/signals.h"

namespace {
constexpr char kUsage[] = R"(usage: tessera <command> [options]

commands:
  train     train a model from a run config        (tessera train --help)
  sample    generate images from a trained run     (tessera sample --help)
  generate  continue a prompt with a trained Mamba hybrid (tessera generate --help)
  data      import, synthesize and verify data     (tessera data --help)
  ckpt      list, show, verify, diff and export checkpoints (tessera ckpt --help)
  recommend top items for a user of an HSTU run    (tessera recommend --help)
  debug     numerics dump of one step for comparison with another implementation
            (tessera debug --help)

exit codes: 0 done, 2 usage or config error, 3 data error, 4 checkpoint error,
            5 communication failure, 6 numerical failure (NaN/Inf), 1 internal error,
            75 stopped by SIGTERM/SIGUSR1 (after saving, or before there was
            anything to save), 130 interrupted (SIGINT)
)";
}  // namespace

int main(int argc, char** argv) {
  tessera::EnsureThreadWaitPolicy(argv);  // may re-execute: first, before any OpenMP call
  tessera::InstallStartupSignalHandlers();  // SIGTERM -> 75, SIGINT -> 130 until training
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return tessera::ExitCodeFor(tessera::UsageError("no command"));
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (command == "train") return tessera::TrainCommand(args);
  if (command == "sample") return tessera::SampleCommand(args);
  if (command == "generate") return tessera::GenerateCommand(args);
  if (command == "data") return tessera::DataCommand(args);
  if (command == "ckpt") return tessera::CkptCommand(args);
  if (command == "recommend") return tessera::RecommendCommand(args);
  if (command == "debug") return tessera::DebugCommand(args);
  std::fprintf(stderr, "tessera: error: unknown command \"%s\"\n\n%s", command.c_str(), kUsage);
  return 2;
}
