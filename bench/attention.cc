// Attention forward/backward throughput at DiT-MoE shapes, as a fraction of
// oneDNN sgemm throughput measured in the same run (square n = 1024).
//
// FLOP counts (non-causal, multiply-add = 2):
//   forward  4 * B*H*S^2*Dh   (Q K^T and P V)
//   backward 10 * B*H*S^2*Dh  (Q K^T recomputed, dO V^T, P^T dO, dS^T Q, dS K),
//            i.e. 2.5x the forward.
// Softmax exponentials are not counted.
//
// Usage: bench_attention [threads]   (default: OpenMP's default)
#include "runtime/kernels/cpu/attention.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench/timing.h"
#include "absl/strings/str_format.h"
#include "runtime/kernels/cpu/gemm.h"

namespace {

using tessera::cpu::AttentionShape;

using tessera::bench::BestSeconds;

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (float& value : x) value = dist(gen);
  return x;
}

// Runs one shape with fused QKV [B, S, 3, H, Dh] as the DiT block produces it.
void BenchShape(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, double gemm_gflops) {
  const int64_t width = heads * head_dim;
  const AttentionShape shape{batch, seq, heads, head_dim, 3 * width, false};
  const std::vector<float> qkv = Random(batch * seq * 3 * width, 3);
  const std::vector<float> dout = Random(batch * seq * width, 4);
  std::vector<float> out(batch * seq * width), lse(batch * heads * seq);
  std::vector<float> dqkv(qkv.size());
  const float* q = qkv.data();
  const float* k = q + width;
  const float* v = q + 2 * width;

  const double forward_s = BestSeconds(
      20, [&] { tessera::cpu::AttentionForward(shape, q, k, v, out.data(), lse.data()); });
  const double backward_s = BestSeconds(20, [&] {
    tessera::cpu::AttentionBackward(shape, q, k, v, out.data(), dout.data(), lse.data(),
                                    dqkv.data(), dqkv.data() + width, dqkv.data() + 2 * width);
  });
  const double core = static_cast<double>(batch * heads) * seq * seq * head_dim;
  const double forward_gflops = 4.0 * core / forward_s * 1e-9;
  const double backward_gflops = 10.0 * core / backward_s * 1e-9;
  absl::PrintF(
      "B=%d S=%d H=%d Dh=%d  forward %7.3f ms %6.1f GFLOP/s (%.2f of sgemm)  "
      "backward %7.3f ms %6.1f GFLOP/s (%.2f of sgemm)\n",
      batch, seq, heads, head_dim, forward_s * 1e3, forward_gflops, forward_gflops / gemm_gflops,
      backward_s * 1e3, backward_gflops, backward_gflops / gemm_gflops);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) tessera::cpu::SetNumThreads(std::atoi(argv[1]));
  const double gemm_gflops = tessera::bench::GemmGflops(10);
  absl::PrintF("threads %d, oneDNN sgemm n=1024: %.1f GFLOP/s\n", tessera::cpu::NumThreads(),
               gemm_gflops);
  BenchShape(8, 256, 6, 64, gemm_gflops);  // DiT-MoE-S/2 at 256x256 latents
  BenchShape(8, 196, 6, 64, gemm_gflops);
  BenchShape(8, 64, 6, 32, gemm_gflops);
  BenchShape(8, 196, 6, 32, gemm_gflops);
  return 0;
}
