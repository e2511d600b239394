// main() of an MPI benchmark whose work is one Status-returning function:
// MPI up (the runtime's watchdog included), then `body`; a failure is printed
// with the world rank and becomes the process's exit code (ExitCodeFor).
//
//   int main(int argc, char** argv) { return tessera::bench::RunMpiBench(argc, argv, Main); }
#pragma once

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/base/errors.h"

namespace tessera::bench {

inline int RunMpiBench(int argc, char** argv,
                       absl::Status (*body)(int, char**, parallel::MpiRuntime&)) {
  auto mpi = parallel::MpiRuntime::Init(&argc, &argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mpi.status().message()).c_str());
    return 1;
  }
  const absl::Status status = body(argc, argv, **mpi);
  if (!status.ok()) {
    std::fprintf(stderr, "[rank %d] %s\n", (*mpi)->world_rank(),
                 std::string(status.message()).c_str());
    return ExitCodeFor(status);
  }
  return 0;
}

}  // namespace tessera::bench
