// The hang watchdog's side channel: which rank entered which collective.
//
// Every collective of a group gets a sequence number (1, 2, ... per group,
// the same on every member because members issue the group's collectives in
// the same order). When a Wait deadline passes, the waiting rank must say
// which members never arrived at that sequence number — without asking them
// through MPI, since a dead or stuck peer would never answer and a one-sided
// MPI_Win_lock on a dead peer can block forever.
//
// Design: each rank keeps, in memory, the last sequence number it entered for
// each of its groups (one relaxed atomic store per collective: nothing on
// the hot path touches the filesystem). A publisher thread writes these to a
// small text file `<dir>/rank-<R>` every `publish_period` when something
// changed, and at least every second as a heartbeat, by write-then-rename so
// that a reader never sees a half-written file. A rank that waited past its
// deadline reads its peers' files; a file survives its process, so a killed
// rank's last sequence number stays readable. Plain reads of small files
// cannot hang the way a message to a dead peer can.
//
// Limits (documented in docs/parallelism-comm.md):
//  - A record lags the truth by up to `publish_period`; Diagnose re-reads for
//    a short grace period before calling a rank late.
//  - Across nodes the directory must be on a filesystem every node sees
//    (TESSERA_WATCHDOG_DIR, e.g. inside the run directory); under /tmp (the
//    default) a rank on another node shows as "no record".
//  - A job that ends normally removes its directory. One that is aborted or
//    killed leaves it (its records name the late ranks for a post-mortem)
//    until the next job starting under the same base directory: at start-up
//    the first rank of each node removes every abandoned one
//    (RemoveAbandonedWatchdogDirectories).
//  - "process gone" is only detectable for peers on the same host (kill(pid,
//    0)); for others the heartbeat age is shown.
//
// The publisher thread makes no MPI calls, so MPI_THREAD_FUNNELED suffices.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::parallel {

// One group's sequence counter on this rank.
class WatchdogGroup {
 public:
  explicit WatchdogGroup(std::string key) : key_(std::move(key)) {}
  // Starts the next collective of the group; returns its sequence number.
  int64_t Enter() { return last_entered_.fetch_add(1, std::memory_order_relaxed) + 1; }
  int64_t last_entered() const { return last_entered_.load(std::memory_order_relaxed); }
  const std::string& key() const { return key_; }

 private:
  const std::string key_;  // same on every member, unique in the job
  std::atomic<int64_t> last_entered_{0};
};

// What a peer's record says (or that there is none).
struct PeerRecord {
  bool found = false;
  int64_t pid = 0;
  std::string host;
  int64_t heartbeat_unix_ms = 0;
  std::map<std::string, int64_t> last_entered;  // group key → sequence number
};

// Parses the text of a record file; found=false if it is not one.
PeerRecord ParsePeerRecord(const std::string& text);

// The base directory the job directories go under: TESSERA_WATCHDOG_DIR, or /tmp.
std::string WatchdogBaseDirectory();

// Removes the tessera-watchdog-* directories under `base` that no live job
// uses: every record in it is of a process that is gone (a record written on
// this host, `host`, whose pid no longer exists) or whose heartbeat (written
// every second while the process lives) is older than `abandoned_after`; a
// directory without records counts when it was last modified that long ago.
// Best effort: what cannot be read or removed is left. Returns how many
// directories were removed.
int RemoveAbandonedWatchdogDirectories(const std::string& base, const std::string& host,
                                       absl::Duration abandoned_after = absl::Minutes(10));

class Watchdog {
 public:
  // Collective over `world`: rank 0 picks the directory (see Directory
  // below) and broadcasts it so that every rank agrees on it.
  static absl::StatusOr<std::shared_ptr<Watchdog>> Create(
      MPI_Comm world, absl::Duration publish_period = absl::Milliseconds(20));
  ~Watchdog();  // stops the publisher and removes this rank's record
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // A counter for a group named `name` with these world ranks. Every member
  // must register its groups in the same order (which communicator creation
  // guarantees, being collective); the key then agrees across members even
  // when the same ranks form several groups of the same name.
  std::shared_ptr<WatchdogGroup> Register(const std::string& name,
                                          const std::vector<int>& world_ranks);

  // Members of `world_ranks` (other than this rank) whose record says they
  // have not entered sequence number `seq` of `group`, re-reading for up to
  // a grace period so that publishing lag does not blame a rank that is only
  // slow to write. Returns the sentence for the timeout message, e.g.
  // "ranks that never arrived (world ranks): 3 (last recorded entering #41;
  // process 812 on node7 is gone)".
  std::string DescribeLateRanks(const WatchdogGroup& group, const std::vector<int>& world_ranks,
                                int64_t seq) const;
  // For point-to-point operations: the peer's last collective in `group`
  // and whether its process is alive.
  std::string DescribePeer(const WatchdogGroup& group, int world_rank) const;

  // Reads world rank `rank`'s record (found=false if absent).
  PeerRecord ReadRecord(int rank) const;
  // Writes this rank's record now (the publisher does it on its own; tests
  // and shutdown paths call it to skip the lag).
  absl::Status PublishNow();

  const std::string& dir() const { return dir_; }
  int world_rank() const { return world_rank_; }

 private:
  Watchdog(std::string dir, int world_rank, absl::Duration publish_period);
  void PublisherLoop();
  std::string RecordText();
  std::string PeerState(const PeerRecord& record, const WatchdogGroup& group) const;
  bool ProcessGone(const PeerRecord& record) const;

  const std::string dir_;
  const int world_rank_;
  const absl::Duration publish_period_;
  const std::string host_;

  mutable absl::Mutex mu_;
  std::vector<std::weak_ptr<WatchdogGroup>> groups_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> registrations_ ABSL_GUARDED_BY(mu_);  // name@hash → count
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex write_mu_;  // serialises the publisher and PublishNow
  std::thread publisher_;
};

// Ends the whole job because of `status`: prints "[rank R] <message>" to
// stderr and calls MPI_Abort(MPI_COMM_WORLD, code), code = ExitCodeFor(status)
// (5 for the CommunicationError a timeout produces; 1 for a status without a
// category). Without MPI it exits with that code. For launch/ and tests only:
// library code returns statuses.
[[noreturn]] void AbortJob(const absl::Status& status);

// AbortJob for a thread other than the one that initialised MPI (the
// collective watchdog's): MPI runs at MPI_THREAD_FUNNELED, which allows MPI
// calls from the main thread only, so this makes none. It prints
// "[rank R] <message>" to stderr (R = `world_rank`, the caller's cached
// rank), flushes stdout and stderr and ends the process with _exit(code),
// code = ExitCodeFor(status) (5 for a CommunicationError): no destructors,
// no atexit handlers, nothing that could block behind the main thread.
// mpirun sees a rank end with a non-zero code without MPI_Finalize, tears
// the job down and itself exits with that code (Open MPI, measured:
// docs/reliability.md).
[[noreturn]] void ExitJobFromThread(const absl::Status& status, int world_rank);

}  // namespace tessera::parallel
