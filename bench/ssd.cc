// The Mamba-2 SSD scan, forward + backward, as a fraction of the oneDNN sgemm
// rate measured in the same run (square n = 1024), at chunk sizes 64-256 and
// lengths 1k-16k; then its time against causal attention's at the same
// lengths (same heads and head_dim), as ratios to the 1k time: the scan
// should grow like L, attention like L^2.
//
// FLOPs (multiply-add = 2, cpu::SsdScanForwardFlops): per head and chunk of
// length l, 2 l^2 (N + P) for C B^T and its masked product with x*dt, plus
// 4 l P N for state-to-output and the chunk state. Backward counted as 2x
// the forward (it runs 2.3x the forward's products plus a state-only
// recompute). Exponentials and the conv are not counted.
//
// Usage: bench_ssd [threads] [max_len]   (defaults: OpenMP's default, 16384)
#include "runtime/kernels/cpu/ssd.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "bench/timing.h"
#include "absl/strings/str_format.h"
#include "runtime/base/random.h"
#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/gemm.h"

namespace {

using tessera::AttentionShape;
using tessera::SsdShape;
namespace cpu = tessera::cpu;

using tessera::bench::BestSeconds;

std::vector<float> Uniform(int64_t n, uint64_t seed, float lo, float hi) {
  tessera::Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = lo + (hi - lo) * rng.Uniform();
  return v;
}

// Mamba-2 at d_inner 512: 8 heads of P = 64, one group, N = 128.
constexpr int64_t kHeads = 8, kHeadDim = 64, kGroups = 1, kStateDim = 128;

struct ScanBuffers {
  std::vector<float> x, dt, A, B, C, D, y, dy, dx, ddt, dA, dB, dC, dD, state, dstate;
  explicit ScanBuffers(int64_t seq) {
    const int64_t xs = seq * kHeads * kHeadDim, bc = seq * kGroups * kStateDim;
    x = Uniform(xs, 1, -1, 1), dt = Uniform(seq * kHeads, 2, 0.001f, 0.1f);
    A = Uniform(kHeads, 3, -16, -1), B = Uniform(bc, 4, -1, 1), C = Uniform(bc, 5, -1, 1);
    D = std::vector<float>(kHeads, 1.0f), dy = Uniform(xs, 6, -1, 1);
    y.resize(xs), dx.resize(xs), ddt.resize(seq * kHeads), dA.resize(kHeads), dB.resize(bc);
    dC.resize(bc), dD.resize(kHeads), state.resize(kHeads * kHeadDim * kStateDim);
    dstate.resize(state.size());
  }
};

struct ScanTimes {
  double forward, backward;
};

ScanTimes TimeScan(const SsdShape& s, ScanBuffers& b, int reps) {
  ScanTimes t;
  t.forward = BestSeconds(reps, [&] {
    cpu::SsdScanForward(s, b.x.data(), b.dt.data(), b.A.data(), b.B.data(), b.C.data(),
                        b.D.data(), nullptr, b.y.data(), b.state.data());
  });
  t.backward = BestSeconds(reps, [&] {
    cpu::SsdScanBackward(s, b.x.data(), b.dt.data(), b.A.data(), b.B.data(), b.C.data(),
                         b.D.data(), nullptr, b.dy.data(), nullptr, b.dx.data(), b.ddt.data(),
                         b.dA.data(), b.dB.data(), b.dC.data(), b.dD.data(), b.dstate.data());
  });
  return t;
}

double TimeAttention(int64_t seq, int reps) {
  const AttentionShape s{1, seq, kHeads, kHeadDim, kHeads * kHeadDim, true};
  const int64_t n = seq * kHeads * kHeadDim;
  const auto q = Uniform(n, 7, -1, 1), k = Uniform(n, 8, -1, 1), v = Uniform(n, 9, -1, 1);
  const auto dout = Uniform(n, 10, -1, 1);
  std::vector<float> out(n), lse(kHeads * seq), dq(n), dk(n), dv(n);
  return BestSeconds(reps, [&] {
    cpu::AttentionForward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
    cpu::AttentionBackward(s, q.data(), k.data(), v.data(), out.data(), dout.data(), lse.data(),
                           dq.data(), dk.data(), dv.data());
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) cpu::SetNumThreads(std::atoi(argv[1]));
  const int64_t max_len = argc > 2 ? std::atoll(argv[2]) : 16384;
  constexpr int64_t n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  const double gemm_seconds = BestSeconds(5, [&] {
    cpu::Gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  });
  const double peak = 2.0 * n * n * n / gemm_seconds;
  absl::PrintF("reference: oneDNN sgemm n=1024, %d threads: %.1f GFLOP/s\n", cpu::NumThreads(),
               peak / 1e9);
  absl::PrintF("SSD scan, B=1 H=%d P=%d G=%d N=%d (fwd+bwd FLOPs = 3x forward)\n", kHeads,
               kHeadDim, kGroups, kStateDim);
  absl::PrintF("%6s %7s %10s %10s %10s %10s %9s %12s\n", "chunk", "L", "fwd ms", "bwd ms",
               "bwd/fwd", "GFLOP/s", "of peak", "us/token");

  std::vector<int64_t> lengths;
  for (int64_t len = 1024; len <= max_len; len *= 2) lengths.push_back(len);
  std::vector<double> scan_seconds_at_128;
  for (int64_t chunk : {64, 128, 256}) {
    for (int64_t len : lengths) {
      const SsdShape s{1, len, kHeads, kHeadDim, kGroups, kStateDim, chunk};
      ScanBuffers buffers(len);
      const ScanTimes t = TimeScan(s, buffers, len <= 4096 ? 3 : 1);
      const double seconds = t.forward + t.backward;
      const double flops = 3.0 * cpu::SsdScanForwardFlops(s);
      absl::PrintF("%6d %7d %10.2f %10.2f %10.2f %10.1f %8.1f%% %12.2f\n", chunk, len,
                   1e3 * t.forward, 1e3 * t.backward, t.backward / t.forward,
                   flops / seconds / 1e9, 100.0 * flops / seconds / peak, 1e6 * seconds / len);
      if (chunk == 128) scan_seconds_at_128.push_back(seconds);
    }
  }

  absl::PrintF("\nGrowth with length (fwd+bwd time / time at L=1024), SSD chunk 128 vs causal\n"
               "attention (FlashAttention-2 CPU kernel, H=%d Dh=%d):\n", kHeads, kHeadDim);
  absl::PrintF("%7s %10s %10s %12s %12s %14s\n", "L", "SSD ms", "attn ms", "SSD growth",
               "attn growth", "attn/SSD time");
  double attn_first = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const double attn = TimeAttention(lengths[i], lengths[i] <= 4096 ? 2 : 1);
    if (i == 0) attn_first = attn;
    absl::PrintF("%7d %10.1f %10.1f %11.2fx %11.2fx %13.2fx\n", lengths[i],
                 1e3 * scan_seconds_at_128[i], 1e3 * attn,
                 scan_seconds_at_128[i] / scan_seconds_at_128[0], attn / attn_first,
                 attn / scan_seconds_at_128[i]);
  }
  absl::PrintF("(length ratio L/1024 = growth of a linear cost; (L/1024)^2 of a quadratic one)\n");
  return 0;
}
