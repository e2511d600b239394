// MPI for the lifetime of one object: MPI_Init_thread on creation,
// MPI_Finalize on destruction, and the job's hang watchdog in between.
//
//   TESSERA_ASSIGN_OR_RETURN(auto mpi, MpiRuntime::Init(&argc, &argv));
//   TESSERA_ASSIGN_OR_RETURN(auto world, mpi->CreateWorld(absl::Seconds(300)));
//
// Asks for MPI_THREAD_MULTIPLE: each group's collective thread runs
// blocking all-reduces while the main thread makes other MPI calls
// (mpi_collective_thread.h), and a background checkpoint save commits over a
// communicator of its own. Accepts MPI_THREAD_FUNNELED (all-reduces then stay
// non-blocking calls polled by the main thread) and fails below it. The
// watchdog's publisher thread never calls MPI.
// When MPI was already initialised (a test harness), it is neither
// initialised nor finalised again. Communicators must be destroyed before
// the runtime.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/watchdog.h"

namespace tessera::parallel {

class MpiRuntime {
 public:
  // Collective over MPI_COMM_WORLD (the watchdog agrees on its directory).
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Init(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // True when MPI allows calls from several threads at once (MPI_THREAD_MULTIPLE).
  bool multithreaded() const { return thread_level_ >= MPI_THREAD_MULTIPLE; }
  const std::shared_ptr<Watchdog>& watchdog() const { return watchdog_; }

  // MpiCommunicator::CreateWorld with this runtime's watchdog.
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> CreateWorld(absl::Duration timeout) const;

 private:
  MpiRuntime() = default;
  bool owns_mpi_ = false;
  int world_rank_ = 0;
  int world_size_ = 1;
  int thread_level_ = 0;
  std::shared_ptr<Watchdog> watchdog_;
};

}  // namespace tessera::parallel
