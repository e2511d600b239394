// main() for distributed gtest binaries (tests/CMakeLists.txt's
// tessera_mpi_test links gtest without gtest_main).
//
// Initialises MPI through MpiRuntime (so tests share one watchdog), prints
// gtest's progress on world rank 0 only and failures on every rank prefixed
// with "[rank R]", and exits non-zero on every rank if any rank failed.
//
//   #include "tests/parallel/comm/mpi_test_main.h"
//   int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <memory>

#include "parallel/comm/mpi_runtime.h"

namespace tessera::parallel::testing {

// The process's MPI runtime, valid while the tests run.
inline MpiRuntime*& MpiForTests() {
  static MpiRuntime* runtime = nullptr;
  return runtime;
}

// Prints each failed assertion with the world rank in front.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};

inline int RunMpiTests(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto runtime = MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok()) {
    std::fprintf(stderr, "MPI start-up failed: %s\n", runtime.status().ToString().c_str());
    return 1;
  }
  MpiForTests() = runtime->get();
  const int rank = (*runtime)->world_rank();
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new RankFailurePrinter(rank));

  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any_failed && !failed) std::fprintf(stderr, "another rank failed\n");
  MpiForTests() = nullptr;
  runtime->reset();  // MPI_Finalize
  return any_failed;
}

}  // namespace tessera::parallel::testing
