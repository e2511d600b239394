// Expert-parallel dispatch on DiT-MoE-S/2-8E2A's MoE layers (hidden 384, 8
// SwiGLU experts of width 1536, top-2, shared expert 768): how long the
// token all-to-all-v exchanges take next to the expert FFN GEMMs they feed.
// Run under mpirun:
//
//   mpirun -np 4 bench_expert_dispatch [ep sizes] [tokens per rank] [layers] [steps]
//
// Defaults: ep 1,2,4; 512 tokens per rank (2 images of 256 tokens, i.e.
// global batch 8 over 4 data-parallel ranks); 12 layers; 2 steps. A step runs
// every layer's Forward, then every Backward in reverse, as the model does.
// ExpertParallelMoe times its four exchanges per layer (dispatch and combine,
// forward and backward: exchange_seconds) and its expert FFNs
// (expert_seconds); both are summed over layers and steps.
//
// Same-run references: a raw MPI_Alltoall over the same ep ranks moving the
// same bytes per exchange in equal blocks (what the exchanges would cost with
// balanced routing and no waiting for other ranks), and the oneDNN sgemm
// rate (Trainer::MeasureGemmPeak) for the expert GEMMs.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/expert_parallel/moe.h"
#include "parallel/mesh/mesh.h"
#include "runtime/base/random.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/train/trainer.h"

namespace {
using namespace tessera;
using Clock = std::chrono::steady_clock;

double MaxOverRanks(double value) {
  MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return value;
}
double SumOverRanks(double value) {
  MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return value;
}

struct Figures {
  double exchange = 0, expert = 0, layers_total = 0;  // seconds, this rank
  double exchange_bytes = 0;                          // sent to other ep ranks, this rank
  double expert_rows = 0;                             // rows this rank's experts ran
};

absl::Status RunEp(parallel::MpiRuntime& mpi, int ep, int64_t tokens, int layers, int steps,
                   double gemm_peak) {
  const int world = mpi.world_size(), rank = mpi.world_rank();
  RunConfig config;
  DitMoeConfig& m = *config.mutable_dit_moe();
  config.mutable_parallel()->set_ep(ep);
  config.mutable_train()->set_global_batch(world);
  TESSERA_ASSIGN_OR_RETURN(parallel::Mesh mesh, parallel::Mesh::Create(config, world, rank));
  TESSERA_ASSIGN_OR_RETURN(auto world_comm, mpi.CreateWorld(absl::Seconds(600)));
  TESSERA_ASSIGN_OR_RETURN(
      auto ep_comm, world_comm->CreateSubgroup(mesh.Group(parallel::GroupKind::kExpert),
                                               mesh.GroupName(parallel::GroupKind::kExpert)));
  const int64_t D = m.hidden_size();
  MoeLayer::Options options;
  options.num_experts = m.moe().num_experts();
  options.top_k = m.moe().experts_per_token();
  options.expert_hidden = 4 * D;
  options.shared_expert_hidden = 2 * D;
  options.balance_loss_coef = m.moe().balance_loss_coef();
  ParameterStore store;
  std::vector<std::unique_ptr<parallel::ExpertParallelMoe>> moe;
  for (int l = 0; l < layers; ++l) {
    TESSERA_ASSIGN_OR_RETURN(
        auto layer, parallel::ExpertParallelMoe::Create(
                        store, *ep_comm, "blocks." + std::to_string(l) + ".moe", D, options));
    moe.push_back(std::move(layer));
  }
  store.Finalize(0);
  std::vector<Tensor> inputs, grads;
  for (int l = 0; l < layers; ++l) {
    Rng rng(static_cast<uint64_t>(l), static_cast<uint64_t>(rank));
    inputs.push_back(Tensor::Empty(DType::kF32, Shape{tokens, D}));  // [tokens, D]
    grads.push_back(Tensor::Empty(DType::kF32, Shape{tokens, D}));
    for (int64_t i = 0; i < tokens * D; ++i) {
      inputs[l].data<float>()[i] = rng.Normal();
      grads[l].data<float>()[i] = 1e-3f * rng.Normal();
    }
  }

  Figures f;
  Arena arena;
  const double gather_bytes = ep > 1 ? ep * (3.0 * options.num_experts + 1) * 8 : 0;
  for (int step = 0; step <= steps; ++step) {
    arena.Reset();
    ep_comm->ResetCounters();
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = Clock::now();
    double exchange = 0, expert = 0, rows = 0;
    for (int l = 0; l < layers; ++l) {
      TESSERA_RETURN_IF_ERROR(moe[l]->Forward(arena, inputs[l]).status());
      exchange += moe[l]->exchange_seconds();
      expert += moe[l]->expert_seconds();
      // Rows of this rank's experts: the ep group's load on them.
      const auto& load = moe[l]->expert_load();
      for (int64_t e = moe[l]->first_expert(); e < moe[l]->first_expert() + moe[l]->local_experts();
           ++e) {
        rows += load[e] * static_cast<double>(tokens * ep * options.top_k);
      }
    }
    for (int l = layers - 1; l >= 0; --l) {
      // exchange_seconds() / expert_seconds() cover the last Forward + Backward.
      const double forward_exchange = moe[l]->exchange_seconds();
      const double forward_expert = moe[l]->expert_seconds();
      TESSERA_RETURN_IF_ERROR(moe[l]->Backward(arena, grads[l], 1.0f).status());
      exchange += moe[l]->exchange_seconds() - forward_exchange;
      expert += moe[l]->expert_seconds() - forward_expert;
    }
    const double total = std::chrono::duration<double>(Clock::now() - start).count();
    if (step == 0) continue;  // warm-up
    f.exchange += exchange;
    f.expert += expert;
    f.layers_total += total;
    f.exchange_bytes += static_cast<double>(ep_comm->bytes_sent()) - layers * gather_bytes;
    f.expert_rows += rows;
  }

  // The reference: equal blocks, the same bytes per exchange, back to back.
  double raw_seconds = 0;
  const double exchanges = 4.0 * layers * steps;
  const double mean_bytes = SumOverRanks(f.exchange_bytes) / world;
  if (ep > 1) {
    const int block = static_cast<int>(mean_bytes / exchanges / (ep - 1) / sizeof(float));
    std::vector<float> send(static_cast<size_t>(block) * ep, 1.0f), recv(send.size());
    MPI_Barrier(ep_comm->comm());
    const auto start = Clock::now();
    for (int i = 0; i < static_cast<int>(exchanges); ++i) {
      MPI_Alltoall(send.data(), block, MPI_FLOAT, recv.data(), block, MPI_FLOAT, ep_comm->comm());
    }
    raw_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  }

  const double n = steps;
  const double exchange = SumOverRanks(f.exchange) / world / n;  // per step, mean rank
  const double expert = SumOverRanks(f.expert) / world / n;
  const double total = MaxOverRanks(f.layers_total) / n;
  const double raw = MaxOverRanks(raw_seconds) / n;
  // Forward 3 GEMMs of 2 D He per row, backward twice that.
  const double expert_flops = SumOverRanks(f.expert_rows) / world / n * 18.0 * D * 4 * D;
  if (rank == 0) {
    std::printf("%3d %9.3f %9.3f %8.2f %8.1f%% %10.1f %10.3f %10.2f %10.3f %9.1f%%\n", ep, exchange,
                expert, expert > 0 ? exchange / expert : 0.0, 100 * exchange / total,
                mean_bytes / n / 1e6, raw, raw > 0 ? exchange / raw : 0.0, total,
                100 * expert_flops / expert / gemm_peak);
  }
  return absl::OkStatus();
}
}  // namespace

int main(int argc, char** argv) {
  auto mpi = parallel::MpiRuntime::Init(&argc, &argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mpi.status().message()).c_str());
    return 1;
  }
  const std::string sizes = argc > 1 ? argv[1] : "1,2,4";
  const int64_t tokens = argc > 2 ? std::atoll(argv[2]) : 512;
  const int layers = argc > 3 ? std::atoi(argv[3]) : 12;
  const int steps = argc > 4 ? std::max(1, std::atoi(argv[4])) : 2;
  const int rank = (*mpi)->world_rank();
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::atoi(s);
  cpu::SetNumThreads(std::max(1, 2 / local));
  const double peak = MaxOverRanks(Trainer::MeasureGemmPeak());
  if (rank == 0) {
    std::printf(
        "DiT-MoE-S/2-8E2A MoE layers x %d, %lld tokens per rank, %d ranks, %d thread(s) "
        "per rank, sgemm peak %.1f GFLOP/s per rank; per step, mean over ranks\n",
        layers, static_cast<long long>(tokens), (*mpi)->world_size(), cpu::NumThreads(),
        peak / 1e9);
    std::printf("%3s %9s %9s %8s %9s %10s %10s %10s %10s %10s\n", "ep", "xchg s", "expert s",
                "xchg/exp", "of layers", "xchg MB", "raw a2a s", "xchg/raw", "layers s",
                "exp/peak");
  }
  for (absl::string_view size : absl::StrSplit(sizes, ',')) {
    const int ep = std::atoi(std::string(size).c_str());
    const absl::Status status = RunEp(**mpi, ep, tokens, layers, steps, peak);
    if (!status.ok()) {
      std::fprintf(stderr, "[rank %d] ep %d: %s\n", rank, ep,
                   std::string(status.message()).c_str());
      return 1;
    }
  }
  return 0;
}
