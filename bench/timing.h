// Timing helpers shared by the benchmarks.
#pragma once

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "runtime/kernels/cpu/gemm.h"

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

// Best of `reps` of the CPU time fn() takes (all of the process's threads),
// in seconds, after one warm-up call. On a shared machine the wall time of
// a call stretches whenever another process takes the core; its CPU time
// does not (much), so with one thread this compares two kernels' work.
template <typename Fn>
double BestCpuSeconds(int reps, Fn&& fn) {
  auto now = [] {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  };
  fn();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double start = now();
    fn();
    best = std::min(best, now() - start);
  }
  return best;
}

// The same-run reference: oneDNN sgemm at n = 1024 (best of `reps`), GFLOP/s.
inline double GemmGflops(int reps) {
  constexpr int64_t n = 1024;
  const std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f);
  std::vector<float> c(n * n);
  const double seconds = BestSeconds(reps, [&] {
    cpu::Gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  });
  return 2.0 * n * n * n / seconds * 1e-9;
}

}  // namespace tessera::bench
