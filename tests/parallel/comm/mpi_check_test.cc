#include "parallel/comm/mpi_check.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

absl::Status BroadcastFromRoot(MPI_Comm comm, int root) {
  int value = 0;
  TESSERA_MPI(MPI_Bcast(&value, 1, MPI_INT, root, comm));
  return absl::OkStatus();
}

TEST(MpiCheck, FailedCallNamesCallLocationErrorAndRank) {
  MPI_Comm comm;
  ASSERT_EQ(MPI_Comm_dup(MPI_COMM_WORLD, &comm), MPI_SUCCESS);
  ASSERT_TRUE(SetErrorsReturn(comm).ok());
  int size = 0, rank = 0;
  MPI_Comm_size(comm, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  // An out-of-range root is caught locally by MPI's argument checks.
  const absl::Status status = BroadcastFromRoot(comm, size + 3);
  MPI_Comm_free(&comm);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 5);
  EXPECT_TRUE(absl::StrContains(status.message(), "MPI_Bcast(&value, 1, MPI_INT, root, comm)"))
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "mpi_check_test.cc:")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), absl::StrCat("on world rank ", rank))) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "root")) << status;  // MPI's own words
}

TEST(MpiCheck, SuccessIsOk) {
  EXPECT_TRUE(BroadcastFromRoot(MPI_COMM_WORLD, 0).ok());
  EXPECT_GE(WorldRankOrMinusOne(), 0);
}

}  // namespace
}  // namespace tessera::parallel
