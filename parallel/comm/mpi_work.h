// The Work handles of the MPI backend.
//
// MpiWork: one non-blocking MPI request, polled by MPI_Test. Open MPI progresses non-blocking collectives only inside MPI calls, so
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
#include "parallel/comm/mpi_collective_thread.h"
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

// What a completed operation still does on the host: the in-place move,
// then the division by `group_size`.
void ApplyFinish(const MpiFinish& finish, size_t group_size);

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

  std::shared_ptr<const MpiGroup> group_;
  OpInfo info_;
  MPI_Request request_;
  MpiFinish finish_;
  std::vector<int> keep_alive_;  // AllToAllV counts/displacements MPI reads until completion
  bool done_ = false;
  absl::Status error_;
};

// MpiThreadWork: a blocking call running on the group's MpiCollectiveThread
// (which applies any kAvg division itself). Wait sleeps until the thread
// reports the call returned or the deadline passes; errors and timeouts read
// exactly as MpiWork's.
class MpiThreadWork final : public Work {
 public:
  MpiThreadWork(std::shared_ptr<const MpiGroup> group, const OpInfo& info, const char* call,
                std::shared_ptr<MpiCompletion> completion)
      : group_(std::move(group)), info_(info), call_(call), completion_(std::move(completion)) {}

  absl::Status Wait(absl::Duration timeout) override;
  bool Test() override { return completion_->done(); }

 private:
  std::shared_ptr<const MpiGroup> group_;
  OpInfo info_;
  const char* call_;
  std::shared_ptr<MpiCompletion> completion_;
};

// The CommunicationError for an operation MPI failed with `code` in `call`,
// and for one whose deadline passed; both name the ranks the watchdog blames.
absl::Status MpiOperationFailed(const MpiGroup& group, const OpInfo& info, int code,
                                const char* call);
absl::Status MpiOperationTimedOut(const MpiGroup& group, const OpInfo& info,
                                  absl::Duration timeout);

}  // namespace tessera::parallel
