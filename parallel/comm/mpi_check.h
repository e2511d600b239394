// Checked MPI calls (after NCCL's src/include/checks.h).
//
//   TESSERA_MPI(MPI_Comm_split(parent, color, key, &comm));
//
// On failure the macro RETURNS from the enclosing function (which returns
// absl::Status or absl::StatusOr<T>) a CommunicationError naming the call,
// file:line, MPI's error string and this process's world rank. MPI only
// returns error codes on communicators whose error handler is
// MPI_ERRORS_RETURN; every communicator tessera creates sets it
// (SetErrorsReturn), otherwise MPI's default handler aborts the job itself.
#pragma once

#include <mpi.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tessera::parallel {

// OK for MPI_SUCCESS, else the CommunicationError described above.
absl::Status MpiStatus(int code, absl::string_view call, absl::string_view file, int line);

// This process's rank in MPI_COMM_WORLD, or -1 before MPI_Init / after
// MPI_Finalize.
int WorldRankOrMinusOne();

// Makes MPI calls on `comm` return error codes instead of aborting.
absl::Status SetErrorsReturn(MPI_Comm comm);

}  // namespace tessera::parallel

#define TESSERA_MPI(expr)                                                  \
  do {                                                                     \
    ::absl::Status tessera_mpi_status_ =                                   \
        ::tessera::parallel::MpiStatus((expr), #expr, __FILE__, __LINE__); \
    if (!tessera_mpi_status_.ok()) return tessera_mpi_status_;             \
  } while (0)
