// Tape: the coarse record of what ran in a forward pass.
//
// Layers have explicit Backward methods; a model's forward pass records one
// closure per layer (or block) it ran, and Backward() replays them in reverse
// order. Conditional paths (a dropped shared expert, a recomputed block) are
// therefore replayed exactly as they ran.
#pragma once

#include <functional>
#include <vector>

namespace tessera {

class Tape {
 public:
  void Record(std::function<void()> backward) { entries_.push_back(std::move(backward)); }
  // Runs every recorded closure, newest first, and empties the tape.
  void Backward() {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) (*it)();
    entries_.clear();
  }
  void Clear() { entries_.clear(); }
  size_t size() const { return entries_.size(); }

 private:
  std::vector<std::function<void()>> entries_;
};

}  // namespace tessera
