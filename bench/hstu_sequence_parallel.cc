// HSTU layers under sequence parallelism (Ulysses over the jagged batch,
// docs/hstu.md "Sequence parallelism") on long histories. A step is the
// forward and backward pass of `layers` HSTU layers over one jagged batch of
// `users` histories of `length` tokens (timestamps one minute apart), the sp
// group being the whole world. Per rank it prints the bytes the sp
// communicator sent in a step (its own counter) against the formula, and the
// arena's peak (the activations a rank keeps); then the step time (median
// over the steps after the first, slowest rank) and tokens per second.
//
//   mpirun -np R bench_hstu_sequence_parallel [users] [length] [dim] [heads] [head_dim]
//                                             [layers] [steps]
//
// Defaults: 2 users of 4096 tokens, D = 128, 4 heads of 32, 2 layers, 3
// steps. Run at R = 1 for the one-process baseline (same batch).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "models/hstu/layer.h"
#include "parallel/comm/single_rank_communicator.h"
#include "bench/mpi_main.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/gemm.h"

namespace {
using namespace tessera;
using Clock = std::chrono::steady_clock;

struct Run {
  int64_t users, length, dim, heads, head_dim, layers, steps;
};

double MaxOverRanks(double value) {
  MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return value;
}

Tensor Input(int64_t rows, int64_t cols, double phase) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<float>()[i] = static_cast<float>(0.5 * std::sin(0.37 * static_cast<double>(i) + phase));
  }
  return t;
}

// Floats this rank sends per layer and step (docs/hstu.md): V, Q, K of its
// tokens to the other ranks' heads and their gradients back; A V of the
// other ranks' tokens back home and its gradient out.
double FormulaFloats(const Run& run, int64_t total, int64_t mine, int ranks) {
  const double heads = static_cast<double>(run.heads) / ranks;
  const double vqk = 3.0 * heads * run.head_dim, av = heads * run.head_dim;
  const double others = static_cast<double>(total - mine);
  return vqk * mine * (ranks - 1) + av * others + av * mine * (ranks - 1) + vqk * others;
}

absl::Status Measure(parallel::MpiCommunicator& sp, const Run& run) {
  parallel::SingleRankCommunicator tp(HostBackend(), "tp");
  hstu::HstuLayerDims dims{run.dim, run.heads, run.head_dim, run.head_dim, run.length, 128};
  ParameterStore store;
  std::vector<std::unique_ptr<hstu::HstuLayer>> layers;
  for (int64_t i = 0; i < run.layers; ++i) {
    TESSERA_ASSIGN_OR_RETURN(auto layer,
                             hstu::HstuLayer::Create(store, tp, sp, "blocks." + std::to_string(i),
                                                     dims));
    layers.push_back(std::move(layer));
  }
  store.Finalize(0);
  const int64_t total = run.users * run.length;
  std::vector<int64_t> offsets{0}, timestamps, query;
  for (int64_t u = 0; u < run.users; ++u) {
    offsets.push_back(offsets.back() + run.length);
    for (int64_t i = 0; i < run.length; ++i) timestamps.push_back(60 * i);
    for (int64_t i = 0; i < run.length; ++i) query.push_back(60 * (i + 1));
  }
  const parallel::TokenRange mine = parallel::SequenceShard(total, sp.rank(), sp.size());
  const hstu::JaggedTokens tokens{offsets.data(), run.users,        total,
                                  mine,           timestamps.data(), query.data()};
  const Tensor x = Input(mine.size(), run.dim, mine.begin);
  const Tensor dy = Input(mine.size(), run.dim, 1.0 + mine.begin);
  Arena arena;
  std::vector<double> times;
  double bytes = 0;
  for (int64_t step = 0; step < run.steps; ++step) {
    arena.Reset();
    store.ZeroGrads();
    MPI_Barrier(MPI_COMM_WORLD);
    sp.ResetCounters();
    const auto start = Clock::now();
    Tensor h = x;
    for (auto& layer : layers) {
      TESSERA_ASSIGN_OR_RETURN(h, layer->Forward(arena, h, tokens, Tensor()));
    }
    Tensor dh = dy;
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
      TESSERA_ASSIGN_OR_RETURN(dh, (*it)->Backward(arena, dh));
    }
    const double seconds = MaxOverRanks(std::chrono::duration<double>(Clock::now() - start).count());
    if (step > 0 || run.steps == 1) times.push_back(seconds);  // step 0 grows the arena
    bytes = static_cast<double>(sp.bytes_sent());
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const int R = sp.size();
  const double formula = 4.0 * run.layers * FormulaFloats(run, total, mine.size(), R);
  std::vector<double> row = {static_cast<double>(mine.size()), bytes, formula,
                             static_cast<double>(arena.peak_bytes())};
  std::vector<double> all(row.size() * R);
  MPI_Gather(row.data(), static_cast<int>(row.size()), MPI_DOUBLE, all.data(),
             static_cast<int>(row.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (sp.rank() != 0) return absl::OkStatus();
  for (int r = 0; r < R; ++r) {
    const double* a = all.data() + r * row.size();
    std::printf("  rank %d: %6.0f tokens, sent %12.0f bytes per step, formula %12.0f (%+.4f%%), "
                "arena peak %.1f MiB\n",
                r, a[0], a[1], a[2], a[2] > 0 ? 100 * (a[1] / a[2] - 1) : 0.0, a[3] / (1 << 20));
  }
  std::printf("sp%d: step %.3f s (median of %zu, slowest rank), %.0f tokens/s\n", R, median,
              times.size(), static_cast<double>(total) / median);
  return absl::OkStatus();
}

absl::Status Main(int argc, char** argv, parallel::MpiRuntime& mpi) {
  const auto arg = [&](int i, int64_t fallback) {
    return argc > i ? std::atoll(argv[i]) : fallback;
  };
  const Run run{arg(1, 2), arg(2, 4096), arg(3, 128), arg(4, 4), arg(5, 32), arg(6, 2),
                std::max<int64_t>(1, arg(7, 3))};
  if (run.users < 1 || run.length < 1 || run.dim < 1 || run.heads < 1 || run.head_dim < 1 ||
      run.layers < 1) {
    return UsageError("users, length, dim, heads, head_dim and layers must be at least 1");
  }
  // Far above what two cores time in minutes, so that a typo is a message,
  // not an allocation of the machine's memory.
  constexpr int64_t kMaxTokens = int64_t{1} << 22;
  if (run.length > kMaxTokens || run.users > kMaxTokens / run.length || run.dim > 65536 ||
      run.heads > 65536 || run.heads * run.head_dim > 65536 || run.layers > 1024 ||
      run.steps > 1000) {
    return UsageError("users * length must be <= 4194304, dim and heads * head_dim <= 65536, "
                      "layers <= 1024 and steps <= 1000");
  }
  if (run.heads % mpi.world_size() != 0) {
    return UsageError(absl::StrFormat("heads = %d must be divisible by the world size %d (sp)",
                                      run.heads, mpi.world_size()));
  }
  TESSERA_ASSIGN_OR_RETURN(auto world, mpi.CreateWorld(absl::Seconds(600)));
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::atoi(s);
  cpu::SetNumThreads(std::max(1, 2 / local));
  if (mpi.world_rank() == 0) {
    std::printf("%lld HSTU layers (D %lld, %lld heads of %lld), %lld users x %lld tokens over "
                "sp%d, %d thread%s per rank\n",
                static_cast<long long>(run.layers), static_cast<long long>(run.dim),
                static_cast<long long>(run.heads), static_cast<long long>(run.head_dim),
                static_cast<long long>(run.users), static_cast<long long>(run.length),
                mpi.world_size(), cpu::NumThreads(), cpu::NumThreads() == 1 ? "" : "s");
  }
  return Measure(*world, run);
}

}  // namespace

int main(int argc, char** argv) { return tessera::bench::RunMpiBench(argc, argv, Main); }
