#include "parallel/comm/mpi_runtime.h"

#include "absl/strings/str_format.h"
#include "parallel/comm/mpi_check.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::parallel {

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Init(int* argc, char*** argv) {
  std::unique_ptr<MpiRuntime> runtime(new MpiRuntime());
  int initialized = 0;
  TESSERA_MPI(MPI_Initialized(&initialized));
  if (!initialized) {
    // MULTIPLE runs large all-reduces on collective threads and lets a
    // background checkpoint save commit over a communicator of its own;
    // FUNNELED is all the step loop strictly needs.
    int provided = 0;
    TESSERA_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
    runtime->owns_mpi_ = true;
    runtime->thread_level_ = provided;
    if (provided < MPI_THREAD_FUNNELED) {
      return CommunicationError(
          absl::StrFormat("MPI provides thread level %d; tessera needs MPI_THREAD_FUNNELED (%d)",
                          provided, MPI_THREAD_FUNNELED));
    }
  }
  if (!runtime->owns_mpi_) TESSERA_MPI(MPI_Query_thread(&runtime->thread_level_));
  TESSERA_RETURN_IF_ERROR(SetErrorsReturn(MPI_COMM_WORLD));
  TESSERA_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &runtime->world_rank_));
  TESSERA_MPI(MPI_Comm_size(MPI_COMM_WORLD, &runtime->world_size_));
  TESSERA_ASSIGN_OR_RETURN(runtime->watchdog_, Watchdog::Create(MPI_COMM_WORLD));
  // Every rank has written its first record before any may leave: the last
  // rank out removes the shared directory once it is empty, which must not
  // happen under a rank still creating its record.
  TESSERA_MPI(MPI_Barrier(MPI_COMM_WORLD));
  return runtime;
}

MpiRuntime::~MpiRuntime() {
  watchdog_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_mpi_ && !finalized) MPI_Finalize();
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiRuntime::CreateWorld(
    absl::Duration timeout) const {
  return MpiCommunicator::CreateWorld(timeout, watchdog_);
}

}  // namespace tessera::parallel
