// Linear layer forward + backward on DiT-MoE-S/2-8E2A shapes (batch 8,
// 256 tokens, hidden 384), as a fraction of the oneDNN sgemm rate measured
// in the same run on a square n=2048 product.
//
//   bench_gemm [threads]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "runtime/kernels/cpu/gemm.h"
#include "runtime/nn/linear.h"
#include "runtime/base/random.h"

namespace {
using Clock = std::chrono::steady_clock;

template <typename Fn>
double BestSeconds(Fn fn, int reps) {
  fn();  // warm up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best;
}

struct Case {
  const char* name;
  int64_t rows, in, out;
};
}  // namespace

int main(int argc, char** argv) {
  using namespace tessera;
  if (argc > 1) cpu::SetNumThreads(std::atoi(argv[1]));
  const int threads = cpu::NumThreads();

  constexpr int64_t n = 2048;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  const double sgemm_seconds = BestSeconds(
      [&] { cpu::Gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); },
      5);
  const double peak = 2.0 * n * n * n / sgemm_seconds;
  std::printf("reference: oneDNN sgemm n=%lld, %d threads: %.1f GFLOP/s\n",
              static_cast<long long>(n), threads, peak / 1e9);
  std::printf("%-28s %6s %6s %6s %10s %10s %8s\n", "Linear fwd+bwd", "rows", "in", "out",
              "ms", "GFLOP/s", "of peak");

  // DiT-MoE-S/2-8E2A: B=8, T=256 tokens, D=384, 8 experts top-2 (512 rows
  // each when balanced), expert hidden 4D, shared expert hidden 2D.
  const Case cases[] = {
      {"attn.qkv", 2048, 384, 1152},          {"attn.proj", 2048, 384, 384},
      {"expert.w_gate (balanced)", 512, 384, 1536}, {"expert.w_down (balanced)", 512, 1536, 384},
      {"shared_expert.w_gate", 2048, 384, 768}, {"shared_expert.w_down", 2048, 768, 384},
      {"x_embedder.proj", 2048, 4, 384},      {"final_layer.linear", 2048, 384, 4},
  };
  double total_flops = 0, total_seconds = 0;
  for (const Case& k : cases) {
    ParameterStore store;
    Linear linear(store, "linear", k.in, k.out);
    store.Finalize(1);
    Tensor x = Tensor::Empty(DType::kF32, Shape{k.rows, k.in});
    Tensor dy = Tensor::Empty(DType::kF32, Shape{k.rows, k.out});
    Rng rng(3);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = rng.Normal();
    for (int64_t i = 0; i < dy.numel(); ++i) dy.data<float>()[i] = rng.Normal();
    Arena arena;
    const double seconds = BestSeconds(
        [&] {
          arena.Reset();
          linear.Forward(arena, x);
          linear.Backward(arena, dy);
        },
        10);
    const double flops = 3 * linear.ForwardFlops(k.rows);
    total_flops += flops;
    total_seconds += seconds;
    std::printf("%-28s %6lld %6lld %6lld %10.3f %10.1f %7.1f%%\n", k.name,
                static_cast<long long>(k.rows), static_cast<long long>(k.in),
                static_cast<long long>(k.out), seconds * 1e3, flops / seconds / 1e9,
                100 * flops / seconds / peak);
  }
  std::printf("%-28s %34.3f %10.1f %7.1f%%\n", "all shapes (FLOP-weighted)", total_seconds * 1e3,
              total_flops / total_seconds / 1e9, 100 * total_flops / total_seconds / peak);
  return 0;
}
