// Timing helpers shared by the benchmarks.
#pragma once

#include <algorithm>
#include <chrono>

namespace tessera::bench {

// Best of `reps` timings of fn(), in seconds, after one warm-up call.
template <typename Fn>
double BestSeconds(int reps, Fn&& fn) {
  fn();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count());
  }
  return best;
}

}  // namespace tessera::bench
