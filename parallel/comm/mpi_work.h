// The Work handle of the MPI backend: one MPI request, polled by MPI_Test.
//
// Open MPI progresses non-blocking collectives only inside MPI calls, so
// Wait polls without sleeping at first; after 1 ms it yields the core
// between polls (ranks may outnumber cores), and after 1 s — the operation
// is then late, not slow — it sleeps 50 µs between polls so that a hung job
// waiting for its deadline does not burn a core.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/op_info.h"

namespace tessera::parallel {

// Runs once when the request completes (kAvg division, in-place shifts).
struct MpiFinish {
  float* average = nullptr;  // divide `average_count` floats by the group size
  size_t average_count = 0;
  char* move_from = nullptr;  // then move `move_bytes` bytes to `move_to`
  char* move_to = nullptr;
  size_t move_bytes = 0;
};

class MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<const MpiGroup> group, const OpInfo& info, MPI_Request request,
          MpiFinish finish, std::vector<int> keep_alive = {})
      : group_(std::move(group)),
        info_(info),
        request_(request),
        finish_(finish),
        keep_alive_(std::move(keep_alive)) {}

  absl::Status Wait(absl::Duration timeout) override;
  bool Test() override;

 private:
  bool Poll();  // one MPI_Test; true once complete or failed
  absl::Status TimeoutError(absl::Duration timeout) const;

  std::shared_ptr<const MpiGroup> group_;
  OpInfo info_;
  MPI_Request request_;
  MpiFinish finish_;
  std::vector<int> keep_alive_;  // AllToAllV counts/displacements MPI reads until completion
  bool done_ = false;
  absl::Status error_;
};

}  // namespace tessera::parallel
