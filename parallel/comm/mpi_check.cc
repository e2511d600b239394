#include "parallel/comm/mpi_check.h"

#include <string>

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"

namespace tessera::parallel {

int WorldRankOrMinusOne() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

absl::Status MpiStatus(int code, absl::string_view call, absl::string_view file, int line) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    absl::SNPrintF(text, sizeof(text), "unknown MPI error %d", code);
  }
  int error_class = code;
  MPI_Error_class(code, &error_class);
  return CommunicationError(absl::StrFormat("%s failed at %s:%d on world rank %d: %s (class %d)",
                                            call, file, line, WorldRankOrMinusOne(), text,
                                            error_class));
}

absl::Status SetErrorsReturn(MPI_Comm comm) {
  TESSERA_MPI(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  return absl::OkStatus();
}

}  // namespace tessera::parallel
