// HostGroup: the few collectives on host bytes that runtime/ needs to
// coordinate ranks (checkpoint commit, metrics, agreeing on a stop signal),
// declared here so that runtime/ never includes parallel/ (DESIGN.md §1).
// parallel/comm/host_group_adapter.h implements it over a Communicator;
// LocalHostGroup below is the one-process group.
//
// Contract: every rank of the group calls the same collectives in the same
// order (as for Communicator). A HostGroup is used from one thread at a time;
// a background saver needs a group of its own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

class HostGroup {
 public:
  virtual ~HostGroup() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  virtual absl::Status Barrier() = 0;
  // `bytes` on `root` replaces `bytes` on every other rank (any length).
  virtual absl::Status Broadcast(std::string* bytes, int root) = 0;
  // Element r of the result is rank r's `bytes`; lengths may differ by rank.
  virtual absl::StatusOr<std::vector<std::string>> AllGather(const std::string& bytes) = 0;
  // The maximum of `value` over the ranks.
  virtual absl::StatusOr<int64_t> AllReduceMax(int64_t value) = 0;

  // The minimum of `value` over the ranks. INT64_MIN has no negation; it is
  // clamped to INT64_MIN + 1 before the exchange.
  absl::StatusOr<int64_t> AllReduceMin(int64_t value) {
    if (value == INT64_MIN) value = INT64_MIN + 1;
    absl::StatusOr<int64_t> negated = AllReduceMax(-value);
    if (!negated.ok()) return negated.status();
    return -*negated;
  }
};

// The group of one process: every collective returns its own input.
class LocalHostGroup final : public HostGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  absl::Status Barrier() override { return absl::OkStatus(); }
  absl::Status Broadcast(std::string* bytes, int root) override {
    (void)bytes;
    if (root != 0) return absl::InvalidArgumentError("LocalHostGroup: broadcast root must be 0");
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::string>> AllGather(const std::string& bytes) override {
    return std::vector<std::string>{bytes};
  }
  absl::StatusOr<int64_t> AllReduceMax(int64_t value) override { return value; }
};

}  // namespace tessera
