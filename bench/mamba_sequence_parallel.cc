// The Mamba-2 layers of the hybrid under sequence parallelism, both
// strategies back to back in one run: passing the scan state (tessera) and
// all-to-all (Megatron-LM's Mamba context parallelism). A step is the
// forward and backward pass of `layers` Mamba-2 mixers of a config over one
// micro-batch of `batch` samples, the sp group being the whole world; it
// prints, per rank, the bytes the sp communicator sent in a step (its own
// counter) against the formula of docs/parallelism.md ("Mamba-2 layers under
// sp"), and the step time of each mode (median over the steps after the
// first, slowest rank) with the ratio all-to-all / state passing.
//
//   mpirun -np R bench_mamba_sequence_parallel [config] [layers] [batch] [steps] [K=V]...
//
// Defaults: configs/mamba_hybrid_125m.textproto, its 13 Mamba layers, its
// train.global_batch (one micro-batch: the world is one replica), 3 steps. K=V are config overrides (model.mamba_hybrid.num_groups=4 lets
// the all-to-all split the 125M config's groups over 4 ranks). Only the
// mixers run: the attention layers' Ulysses traffic and the gradient
// reduction are not part of a step here.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "models/mamba_hybrid/layout.h"
#include "models/mamba_hybrid/mixer.h"
#include "bench/mpi_main.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/config/config.h"
#include "runtime/kernels/cpu/gemm.h"

namespace {
using namespace tessera;
using mamba_hybrid::MixerDims;
using Clock = std::chrono::steady_clock;

struct Run {
  int64_t layers, batch, steps;
};

double MaxOverRanks(double value) {
  MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return value;
}

// docs/parallelism.md, per Mamba layer and micro-batch, in floats (tp = 1).
// State passing: the final state [B, H, P, N] and the conv halo [B, K-1,
// Ch] to the next rank in forward, their gradients to the previous one in
// backward. All-to-all: z, x, B, C, dt to heads and y back in forward, their
// gradients in backward, each keeping 1/R of its buffer at home.
double FormulaFloats(const MixerDims& d, MambaHybridConfig::MambaSpMode mode, double B, double L,
                     int R, int rank) {
  if (mode == MambaHybridConfig::STATE_PASSING) {
    const double one_way =
        B * d.heads * d.head_dim * d.state_dim + B * (d.conv_width - 1) * d.conv_channels();
    return one_way * ((rank + 1 < R ? 1 : 0) + (rank > 0 ? 1 : 0));
  }
  const double before = 2.0 * d.d_inner + 2.0 * d.groups * d.state_dim + d.heads;
  return 2 * (R - 1.0) / R * B * (L / R) * (before + d.d_inner);
}

Tensor Input(int64_t rows, int64_t cols, double phase) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<float>()[i] = static_cast<float>(0.5 * std::sin(0.37 * static_cast<double>(i) + phase));
  }
  return t;
}

struct Measured {
  double bytes = 0, seconds = 0;
};

// `run.steps` steps of the mixers; bytes and time of the last steps.
absl::StatusOr<Measured> MeasureMode(parallel::MpiCommunicator& sp, const RunConfig& config,
                                     const Run& run) {
  const MambaHybridConfig& m = config.mamba_hybrid();
  parallel::SingleRankCommunicator tp(HostBackend(), "tp");
  mamba_hybrid::HybridLayout layout;
  layout.tp = &tp;
  layout.sp = &sp;
  ParameterStore store;
  std::vector<std::unique_ptr<mamba_hybrid::Mamba2Mixer>> mixers;
  for (int64_t i = 0; i < run.layers; ++i) {
    mixers.push_back(std::make_unique<mamba_hybrid::Mamba2Mixer>(
        store, "layers." + std::to_string(i) + ".mixer", m, layout));
  }
  store.Finalize(config.train().seed());
  const int64_t shard = m.seq_len() / sp.size(), rows = run.batch * shard;
  const Tensor x = Input(rows, m.hidden_size(), sp.rank()), dy = Input(rows, m.hidden_size(), 1);
  Arena arena;
  std::vector<double> times;
  Measured measured;
  for (int64_t step = 0; step < run.steps; ++step) {
    arena.Reset();
    store.ZeroGrads();
    MPI_Barrier(MPI_COMM_WORLD);
    sp.ResetCounters();
    const auto start = Clock::now();
    Tensor h = x;
    for (auto& mixer : mixers) {
      TESSERA_ASSIGN_OR_RETURN(h, mixer->Forward(arena, h, run.batch, shard));
    }
    Tensor dh = dy;
    for (auto it = mixers.rbegin(); it != mixers.rend(); ++it) {
      TESSERA_ASSIGN_OR_RETURN(dh, (*it)->Backward(arena, dh));
    }
    const double seconds = MaxOverRanks(std::chrono::duration<double>(Clock::now() - start).count());
    if (step > 0 || run.steps == 1) times.push_back(seconds);  // step 0 warms up the arena
    measured.bytes = static_cast<double>(sp.bytes_sent());
  }
  std::sort(times.begin(), times.end());
  measured.seconds = times[times.size() / 2];
  return measured;
}

absl::Status RunBoth(parallel::MpiCommunicator& sp, RunConfig config, const Run& run) {
  const int R = sp.size(), rank = sp.rank();
  const char* names[] = {"state passing", "all-to-all"};
  const MambaHybridConfig::MambaSpMode modes[] = {MambaHybridConfig::STATE_PASSING,
                                                  MambaHybridConfig::ALL_TO_ALL};
  double seconds[2];
  for (int i = 0; i < 2; ++i) {
    config.mutable_mamba_hybrid()->set_mamba_sp_mode(modes[i]);
    TESSERA_RETURN_IF_ERROR(ValidateLayout(config, R));
    TESSERA_ASSIGN_OR_RETURN(const Measured measured, MeasureMode(sp, config, run));
    const double formula = 4.0 * run.layers *
                           FormulaFloats(mamba_hybrid::ResolveMixerDims(config.mamba_hybrid()),
                                         modes[i], run.batch, config.mamba_hybrid().seq_len(),
                                         R, rank);
    std::vector<double> mine = {measured.bytes, formula}, all(2 * R);
    MPI_Gather(mine.data(), 2, MPI_DOUBLE, all.data(), 2, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    seconds[i] = measured.seconds;
    if (rank != 0) continue;
    std::printf("%s: step %.3f s (median, slowest rank)\n", names[i], measured.seconds);
    for (int r = 0; r < R; ++r) {
      const double got = all[2 * r], want = all[2 * r + 1];
      std::printf("  rank %d sent %12.0f bytes per step, formula %12.0f (%+.4f%%)\n", r, got, want,
                  want > 0 ? 100 * (got / want - 1) : 0.0);
    }
  }
  if (rank == 0) {
    std::printf("all-to-all / state passing: step time %.2fx\n", seconds[1] / seconds[0]);
  }
  return absl::OkStatus();
}

absl::Status Main(int argc, char** argv, parallel::MpiRuntime& mpi) {
  const std::string path =
      argc > 1 ? argv[1] : std::string(TESSERA_SOURCE_DIR) + "/configs/mamba_hybrid_125m.textproto";
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(path));
  std::vector<std::string> overrides(argv + std::min(argc, 5), argv + argc);
  TESSERA_RETURN_IF_ERROR(ApplyOverrides(&config, overrides));
  const Run run{argc > 2 ? std::atoll(argv[2]) : 13,
                argc > 3 ? std::atoll(argv[3]) : config.train().global_batch(),
                argc > 4 ? std::max(1LL, std::atoll(argv[4])) : 3};
  if (run.layers < 1 || run.batch < 1) {
    return UsageError("layers and batch must be at least 1");
  }
  config.mutable_parallel()->set_sp(mpi.world_size());
  TESSERA_ASSIGN_OR_RETURN(auto world, mpi.CreateWorld(absl::Seconds(600)));
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::atoi(s);
  cpu::SetNumThreads(std::max(1, 2 / local));
  const MixerDims d = mamba_hybrid::ResolveMixerDims(config.mamba_hybrid());
  if (mpi.world_rank() == 0) {
    std::printf(
        "%s: %lld Mamba-2 mixers (hidden %lld, %lld heads of %lld, %lld groups, state %lld, "
        "conv %lld), batch %lld x %d tokens over sp%d, %d thread%s per rank\n",
        path.c_str(), static_cast<long long>(run.layers), static_cast<long long>(d.hidden),
        static_cast<long long>(d.heads), static_cast<long long>(d.head_dim),
        static_cast<long long>(d.groups), static_cast<long long>(d.state_dim),
        static_cast<long long>(d.conv_width), static_cast<long long>(run.batch),
        config.mamba_hybrid().seq_len(), mpi.world_size(), cpu::NumThreads(),
        cpu::NumThreads() == 1 ? "" : "s");
  }
  return RunBoth(*world, config, run);
}

}  // namespace

int main(int argc, char** argv) { return tessera::bench::RunMpiBench(argc, argv, Main); }
