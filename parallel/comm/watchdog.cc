#include "parallel/comm/watchdog.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "parallel/comm/mpi_check.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::parallel {
namespace {

constexpr char kMagic[] = "tessera-watchdog 1";
constexpr char kDirectoryPrefix[] = "tessera-watchdog-";
// A record older than this (on another host) is worth mentioning.
constexpr absl::Duration kStaleHeartbeat = absl::Seconds(3);
constexpr absl::Duration kHeartbeatPeriod = absl::Seconds(1);

std::string Sanitize(absl::string_view text) {
  std::string out(text);
  for (char& c : out) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '_' || c == '-' || c == '.' || c == ':' || c == ',' || c == '[' ||
                       c == ']';
    if (!plain) c = '_';
  }
  return out;
}

uint64_t HashRanks(const std::vector<int>& ranks) {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (int rank : ranks) {
    for (int byte = 0; byte < 4; ++byte) {
      hash ^= static_cast<uint64_t>((static_cast<uint32_t>(rank) >> (8 * byte)) & 0xffu);
      hash *= 1099511628211ull;
    }
  }
  return hash;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

// rank 0's choice, broadcast to all: <base>/tessera-watchdog-<job>-<pid>-<time>.
// The pid and time keep a rerun of the same job id away from stale records.
std::string ChooseDirectory() {
  std::string job = "local";
  for (const char* variable : {"OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE", "SLURM_JOB_ID"}) {
    if (const char* value = std::getenv(variable); value != nullptr && *value != '\0') {
      job = Sanitize(value);
      break;
    }
  }
  return absl::StrFormat("%s/%s%s-%d-%d", WatchdogBaseDirectory(), kDirectoryPrefix, job,
                         static_cast<int>(getpid()), absl::ToUnixSeconds(absl::Now()));
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Whether no live job uses `dir` (see RemoveAbandonedWatchdogDirectories).
bool Abandoned(const std::filesystem::path& dir, const std::string& host,
               absl::Duration abandoned_after) {
  const absl::Time now = absl::Now();
  std::error_code error;
  bool any_record = false;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("rank-", 0) != 0 || name.find(".tmp") != std::string::npos) continue;
    const PeerRecord record = ParsePeerRecord(ReadFile(entry.path()));
    if (!record.found) return false;  // not ours, or being written: leave it
    any_record = true;
    const bool gone = record.host == host && kill(static_cast<pid_t>(record.pid), 0) != 0 &&
                      errno == ESRCH;
    const bool silent = now - absl::FromUnixMillis(record.heartbeat_unix_ms) > abandoned_after;
    if (!gone && !silent) return false;
  }
  if (error) return false;
  if (any_record) return true;
  struct stat info;
  return stat(dir.c_str(), &info) == 0 &&
         now - absl::FromTimeT(info.st_mtime) > abandoned_after;
}

absl::Status MakeDirectories(const std::string& path) {
  for (size_t slash = 1; slash != std::string::npos;) {
    slash = path.find('/', slash + 1);
    const std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0777) != 0 && errno != EEXIST) {
      return CommunicationError(absl::StrFormat("watchdog: cannot create directory %s: %s", prefix,
                                                std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp";
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return CommunicationError(
        absl::StrFormat("watchdog: cannot write %s: %s", temporary, std::strerror(errno)));
  }
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      close(fd);
      return CommunicationError(
          absl::StrFormat("watchdog: cannot write %s: %s", temporary, std::strerror(error)));
    }
    written += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(temporary.c_str(), path.c_str()) != 0) {
    return CommunicationError(
        absl::StrFormat("watchdog: cannot rename %s: %s", temporary, std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

std::string WatchdogBaseDirectory() {
  const char* base = std::getenv("TESSERA_WATCHDOG_DIR");
  return base != nullptr && *base != '\0' ? base : "/tmp";
}

int RemoveAbandonedWatchdogDirectories(const std::string& base, const std::string& host,
                                       absl::Duration abandoned_after) {
  int removed = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(base, error)) {
    if (entry.path().filename().string().rfind(kDirectoryPrefix, 0) != 0) continue;
    if (!entry.is_directory(error) || entry.is_symlink(error)) continue;
    if (!Abandoned(entry.path(), Sanitize(host), abandoned_after)) continue;
    std::error_code ignored;  // another node may be removing it too
    if (std::filesystem::remove_all(entry.path(), ignored) > 0) ++removed;
  }
  return removed;
}

PeerRecord ParsePeerRecord(const std::string& text) {
  PeerRecord record;
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.empty() || lines[0] != kMagic) return record;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<absl::string_view> fields = absl::StrSplit(lines[i], ' ', absl::SkipEmpty());
    if (fields.size() == 2 && fields[0] == "pid") {
      if (!absl::SimpleAtoi(fields[1], &record.pid)) return PeerRecord{};
    } else if (fields.size() == 2 && fields[0] == "host") {
      record.host = std::string(fields[1]);
    } else if (fields.size() == 2 && fields[0] == "heartbeat_unix_ms") {
      if (!absl::SimpleAtoi(fields[1], &record.heartbeat_unix_ms)) return PeerRecord{};
    } else if (fields.size() == 3 && fields[0] == "group") {
      int64_t seq = 0;
      if (!absl::SimpleAtoi(fields[2], &seq)) return PeerRecord{};
      record.last_entered[std::string(fields[1])] = seq;
    } else {
      return PeerRecord{};  // not ours, or torn: treat as absent
    }
  }
  record.found = true;
  return record;
}

absl::StatusOr<std::shared_ptr<Watchdog>> Watchdog::Create(MPI_Comm world,
                                                           absl::Duration publish_period) {
  int rank = 0;
  TESSERA_MPI(MPI_Comm_rank(world, &rank));
  std::string dir = rank == 0 ? ChooseDirectory() : std::string();
  int length = static_cast<int>(dir.size());
  TESSERA_MPI(MPI_Bcast(&length, 1, MPI_INT, 0, world));
  dir.resize(static_cast<size_t>(length));
  TESSERA_MPI(MPI_Bcast(dir.data(), length, MPI_CHAR, 0, world));
  // The first rank of each node clears what aborted jobs left under the base.
  MPI_Comm node = MPI_COMM_NULL;
  TESSERA_MPI(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  int local_rank = 0;
  const int code = MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  TESSERA_MPI(code);
  if (local_rank == 0) RemoveAbandonedWatchdogDirectories(dir.substr(0, dir.rfind('/')), HostName());
  TESSERA_RETURN_IF_ERROR(MakeDirectories(dir));
  int world_rank = 0;
  TESSERA_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  std::shared_ptr<Watchdog> watchdog(new Watchdog(std::move(dir), world_rank, publish_period));
  // The first record exists before any collective, so "no record" later
  // means the rank never got this far (or the directory is not shared).
  TESSERA_RETURN_IF_ERROR(watchdog->PublishNow());
  watchdog->publisher_ = std::thread([w = watchdog.get()] { w->PublisherLoop(); });
  return watchdog;
}

Watchdog::Watchdog(std::string dir, int world_rank, absl::Duration publish_period)
    : dir_(std::move(dir)),
      world_rank_(world_rank),
      publish_period_(publish_period),
      host_(HostName()) {}

Watchdog::~Watchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (publisher_.joinable()) publisher_.join();
  unlink(absl::StrCat(dir_, "/rank-", world_rank_).c_str());
  rmdir(dir_.c_str());  // succeeds for whichever rank leaves last
}

std::shared_ptr<WatchdogGroup> Watchdog::Register(const std::string& name,
                                                  const std::vector<int>& world_ranks) {
  const std::string base = absl::StrFormat("%s@%016x", Sanitize(name), HashRanks(world_ranks));
  absl::MutexLock lock(&mu_);
  const int incarnation = registrations_[base]++;
  auto group = std::make_shared<WatchdogGroup>(absl::StrCat(base, "#", incarnation));
  groups_.push_back(group);
  return group;
}

std::string Watchdog::RecordText() {
  std::string text = absl::StrFormat("%s\npid %d\nhost %s\nheartbeat_unix_ms %d\n", kMagic,
                                     static_cast<int64_t>(getpid()), Sanitize(host_),
                                     absl::ToUnixMillis(absl::Now()));
  absl::MutexLock lock(&mu_);
  std::vector<std::weak_ptr<WatchdogGroup>> live;
  for (const auto& weak : groups_) {
    if (auto group = weak.lock()) {
      absl::StrAppend(&text, "group ", group->key(), " ", group->last_entered(), "\n");
      live.push_back(weak);
    }
  }
  groups_.swap(live);  // forget destroyed communicators
  return text;
}

absl::Status Watchdog::PublishNow() {
  absl::MutexLock lock(&write_mu_);
  return WriteFileAtomically(absl::StrCat(dir_, "/rank-", world_rank_), RecordText());
}

void Watchdog::PublisherLoop() {
  int64_t published_fingerprint = -1;
  absl::Time published_at = absl::Now();
  while (true) {
    int64_t fingerprint = 0;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), publish_period_);
      if (stop_) return;
      // Sequence numbers only grow, so their sum (with the group count)
      // changes whenever any group entered a collective.
      for (const auto& weak : groups_) {
        if (auto group = weak.lock()) fingerprint += group->last_entered() + (int64_t{1} << 40);
      }
    }
    if (fingerprint != published_fingerprint || absl::Now() - published_at >= kHeartbeatPeriod) {
      // A failed write only weakens a later diagnosis; it must not stop training.
      if (PublishNow().ok()) {
        published_fingerprint = fingerprint;
        published_at = absl::Now();
      }
    }
  }
}

PeerRecord Watchdog::ReadRecord(int rank) const {
  return ParsePeerRecord(ReadFile(absl::StrCat(dir_, "/rank-", rank)));
}

bool Watchdog::ProcessGone(const PeerRecord& record) const {
  // Only a process on this host can be probed; kill(pid, 0) sends nothing.
  return record.found && record.host == Sanitize(host_) &&
         kill(static_cast<pid_t>(record.pid), 0) != 0 && errno == ESRCH;
}

std::string Watchdog::PeerState(const PeerRecord& record, const WatchdogGroup& group) const {
  if (!record.found) {
    return absl::StrCat("no watchdog record: it never started, or ", dir_,
                        " is not shared with its node");
  }
  auto it = record.last_entered.find(group.key());
  const int64_t seq = it == record.last_entered.end() ? 0 : it->second;
  // A record lags by up to one publish period: say what it recorded.
  std::string state = seq == 0 ? "recorded no collective of this group"
                               : absl::StrCat("last recorded entering #", seq);
  if (ProcessGone(record)) {
    absl::StrAppend(&state, "; process ", record.pid, " on ", record.host, " is gone");
  } else if (record.host != Sanitize(host_)) {
    const absl::Duration age = absl::Now() - absl::FromUnixMillis(record.heartbeat_unix_ms);
    if (age > kStaleHeartbeat) {
      absl::StrAppend(&state, "; last heartbeat from ", record.host, " ",
                      absl::FormatDuration(absl::Trunc(age, absl::Milliseconds(100))), " ago");
    }
  }
  return state;
}

std::string Watchdog::DescribeLateRanks(const WatchdogGroup& group,
                                        const std::vector<int>& world_ranks, int64_t seq) const {
  const absl::Time give_up = absl::Now() + std::max(5 * publish_period_, absl::Milliseconds(100));
  std::vector<std::string> late, gone;
  while (true) {
    late.clear();
    gone.clear();
    for (int rank : world_ranks) {
      if (rank == world_rank_) continue;
      const PeerRecord record = ReadRecord(rank);
      auto it = record.last_entered.find(group.key());
      const int64_t entered = it == record.last_entered.end() ? 0 : it->second;
      const std::string state = PeerState(record, group);
      if (!record.found || entered < seq) {
        late.push_back(absl::StrCat(rank, " (", state, ")"));
      } else if (ProcessGone(record)) {
        gone.push_back(absl::StrCat(rank, " (", state, ")"));
      }
    }
    if (late.empty() || absl::Now() >= give_up) break;
    absl::SleepFor(publish_period_ / 2);  // a peer may just not have published yet
  }
  std::string text = late.empty() ? "every rank entered it, so one is stuck inside it or the "
                                    "transport failed"
                                  : absl::StrCat("ranks that never arrived (world ranks): ",
                                                 absl::StrJoin(late, ", "));
  if (!gone.empty()) absl::StrAppend(&text, "; entered but gone: ", absl::StrJoin(gone, ", "));
  absl::StrAppend(&text, " [watchdog records in ", dir_, "]");
  return text;
}

std::string Watchdog::DescribePeer(const WatchdogGroup& group, int world_rank) const {
  return absl::StrCat("peer world rank ", world_rank, ": ",
                      PeerState(ReadRecord(world_rank), group), " [watchdog records in ", dir_,
                      "]");
}

void AbortJob(const absl::Status& status) {
  const int rank = WorldRankOrMinusOne();
  int code = ExitCodeFor(status);
  if (code == kExitOk) code = kExitInternal;  // asked to abort without an error
  std::fprintf(stderr, "[rank %d] %s\n", rank, std::string(status.message()).c_str());
  std::fflush(stderr);
  if (rank >= 0) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void ExitJobFromThread(const absl::Status& status, int world_rank) {
  int code = ExitCodeFor(status);
  if (code == kExitOk) code = kExitInternal;  // asked to end without an error
  std::fprintf(stderr, "[rank %d] %s\n", world_rank, std::string(status.message()).c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(code);
}

}  // namespace tessera::parallel
