// Tape: the coarse record of what ran in a forward pass.
//
// Layers have explicit Backward methods; a model's forward pass records one
// closure per layer (or block) it ran, and Backward() replays them in reverse
// order. Conditional paths (a dropped shared expert, a recomputed block) are
// therefore replayed exactly as they ran.
#pragma once

#include <functional>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

class Tape {
 public:
  // `first_param`..`end_param`: the parameter ids whose gradients are
  // complete once this entry's backward has run (empty range: none).
  // A closure fails only when a collective inside it does (parallel layers).
  void Record(std::function<absl::Status()> backward, int first_param = 0, int end_param = 0) {
    entries_.push_back({std::move(backward), first_param, end_param});
  }
  // Called after each entry's backward with its parameter range, so that
  // gradient reduction can start while the rest of backward runs.
  void set_on_gradients_ready(std::function<void(int, int)> callback) {
    on_ready_ = std::move(callback);
  }
  // Runs every recorded closure, newest first, and empties the tape. Stops
  // at the first failure and returns it.
  absl::Status Backward() {
    absl::Status status;
    for (auto it = entries_.rbegin(); it != entries_.rend() && status.ok(); ++it) {
      status = it->backward();
      if (status.ok() && on_ready_ && it->end_param > it->first_param) {
        on_ready_(it->first_param, it->end_param);
      }
    }
    entries_.clear();
    return status;
  }
  void Clear() { entries_.clear(); }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::function<absl::Status()> backward;
    int first_param, end_param;
  };
  std::vector<Entry> entries_;
  std::function<void(int, int)> on_ready_;
};

}  // namespace tessera
