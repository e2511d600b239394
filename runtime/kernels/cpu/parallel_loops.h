// Threading helpers shared by the CPU kernels.
//
// Row-wise kernels use `#pragma omp parallel for if (ShouldParallelize(...))`
// directly. Reductions over rows (parameter gradients) go through
// ForEachColumnBand: each thread owns a contiguous band of columns and adds
// the rows into it in row order, so every output element is the same sum in
// the same order whatever the thread count — bit-for-bit deterministic,
// without per-thread scratch buffers. (A pass of its own after the row pass:
// fusing both behind lambdas and row tiles measured slower on this machine.)
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace tessera::cpu {

// Below this many elements touched, a fork/join costs more than it saves.
inline constexpr int64_t kParallelMinWork = int64_t{1} << 15;

inline bool ShouldParallelize(int64_t work) { return work >= kParallelMinWork; }

// Thread t's band of [0, dim) out of `threads`: contiguous, aligned to 16
// floats (a 64-byte cache line) so two threads never write the same line.
inline void ColumnBand(int64_t dim, int64_t t, int64_t threads, int64_t* c0, int64_t* c1) {
  constexpr int64_t kAlign = 16;
  const int64_t chunks = (dim + kAlign - 1) / kAlign;
  *c0 = std::min(dim, chunks * t / threads * kAlign);
  *c1 = std::min(dim, chunks * (t + 1) / threads * kAlign);
}

// Calls fn(c0, c1) over disjoint column bands covering [0, dim), one band per
// thread. fn must compute each column independently.
template <typename Fn>
void ForEachColumnBand(int64_t dim, int64_t work, Fn&& fn) {
#pragma omp parallel if (ShouldParallelize(work) && dim > 16)
  {
    int64_t c0, c1;
    ColumnBand(dim, omp_get_thread_num(), omp_get_num_threads(), &c0, &c1);
    if (c0 < c1) fn(c0, c1);
  }
}

}  // namespace tessera::cpu
