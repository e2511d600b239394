// Data-parallel overlap on DiT-MoE-S/2-8E2A: run under mpirun.
//
//   mpirun -np 2 bench_data_parallel [per-rank batch] [steps] [zero_stage]
//   mpirun -np 1 bench_data_parallel ...   (the dp1 reference, same per-rank batch)
//
// Per step: the whole step, the backward pass, and the time the step still
// waited for gradient reductions after backward (the exposed part: the
// waits only, not the pass that divides the sums). Then the same buckets
// reduced alone, with nothing to overlap, less that pass: the
// communication time.
// Hidden fraction = 1 - exposed / alone; and the same with the exposed
// wait less the part spent waiting for a slower rank to end its backward
// (load imbalance, which no communication scheme can hide).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/model.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/data_parallel/data_parallel.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/loss.h"

namespace {
using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
}  // namespace

int main(int argc, char** argv) {
  using namespace tessera;
  auto mpi = parallel::MpiRuntime::Init(&argc, &argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mpi.status().message()).c_str());
    return 1;
  }
  const int64_t batch = argc > 1 ? std::atoi(argv[1]) : 8;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 3;
  const int zero_stage = argc > 3 ? std::atoi(argv[3]) : 0;
  const int rank = (*mpi)->world_rank(), world = (*mpi)->world_size();
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::atoi(s);
  cpu::SetNumThreads(std::max(1, 2 / local));

  auto comm = *(*mpi)->CreateWorld(absl::Seconds(600));
  const DitMoeConfig config;  // config.proto's defaults are S/2-8E2A at 32x32x1
  ParameterStore store;
  auto model = *dit_moe::DitMoe::Create(config, store);
  ParameterLayout layout;
  layout.bucket_elements = int64_t{1} << 22;
  layout.shard_multiple = world;
  store.Finalize(0, layout);
  OptimConfig optim;
  auto dp = *parallel::DataParallel::Create(store, optim, zero_stage, comm.get(), comm.get(),
                                            rank == 0);
  model->set_on_gradients_ready([&](int a, int b) { dp->OnGradientsReady(a, b); });
  dit_moe::Diffusion diffusion(config);
  const dit_moe::DitMoeDims d = model->dims();
  Tensor images = Tensor::Empty(DType::kF32, Shape{batch, 1, d.input_size, d.input_size});
  std::vector<int32_t> labels(batch, 3);
  std::vector<int64_t> ids(batch);
  for (int64_t b = 0; b < batch; ++b) ids[b] = b * world + rank;
  Arena arena;
  double step_sum = 0, backward_sum = 0, exposed_sum = 0, skew_sum = 0;
  for (int step = 0; step <= steps; ++step) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = Clock::now();
    arena.Reset();
    store.ZeroGrads();
    dp->BeginMicroBatch(true);
    auto ex = diffusion.MakeExample(arena, images, labels.data(), ids.data(), 0.1f, 10, 0, step);
    absl::StatusOr<Tensor> forward = model->Forward(arena, ex.noisy, ex.t.data(), ex.labels.data());
    if (!forward.ok()) return 1;
    Tensor out = *forward;
    Tensor dout = arena.AllocateUninitialized(DType::kF32, out.shape());
    cpu::MseBackward(out.data<float>(), ex.target.data<float>(), dout.data<float>(), out.numel(),
                     1.0f);
    const auto backward_start = Clock::now();
    if (!model->Backward(arena, dout, 1.0f).ok()) return 1;
    const double backward = Since(backward_start);
    // When each rank's backward ended (one clock for all processes of this
    // machine): no reduction of the last bucket can end before the slowest
    // rank's backward did, so part of the wait after backward is waiting
    // for that rank, not for communication.
    const double end = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
    if (!dp->FinishBackward().ok()) return 1;
    const double exposed = dp->last_wait_seconds();
    double latest_end = end;
    MPI_Allreduce(&end, &latest_end, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    const double skew = std::min(exposed, latest_end - end);
    if (!dp->Step(1e-4f, /*grad_scale=*/nullptr).ok()) return 1;
    const double total = Since(start);
    if (step > 0) {  // the first step warms up arenas and caches
      step_sum += total;
      backward_sum += backward;
      exposed_sum += exposed;
      skew_sum += skew;
    }
  }
  // The same reductions with nothing to hide behind.
  double alone = 0;
  for (int rep = 0; rep < steps; ++rep) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = Clock::now();
    dp->BeginMicroBatch(true);
    dp->OnGradientsReady(0, store.size());
    if (!dp->FinishBackward().ok()) return 1;
    alone += Since(start);
  }
  // FinishBackward's pass that divides the sums (made by one process too):
  // not communication.
  double scaling = 0;
  for (int rep = 0; rep < steps; ++rep) {
    const auto start = Clock::now();
    store.backend().Scale(store.grads().data<float>(), store.numel(), 1.0f);
    scaling += Since(start);
  }
  const double communication_alone = std::max(1e-9, alone - scaling);
  if (rank == 0) {
    const double n = steps;
    std::printf("DiT-MoE-S/2-8E2A, dp%d, ZeRO %d, per-rank batch %lld, %d threads/rank, "
                "%zu buckets of <= 16 MiB, %.0f MB of gradients\n",
                world, zero_stage, static_cast<long long>(batch), cpu::NumThreads(),
                store.buckets().size(), store.numel() * 4 / 1e6);
    std::printf("step %.3f s (%.2f samples/s over all ranks), backward %.3f s\n", step_sum / n,
                batch * world / (step_sum / n), backward_sum / n);
    std::printf("gradient reduction alone %.3f s (%.3f s communication, %.3f s dividing the "
                "sums); exposed after backward %.3f s; hidden %.1f%%\n",
                alone / n, communication_alone / n, scaling / n, exposed_sum / n,
                100.0 * (1.0 - exposed_sum / communication_alone));
    // Rank 0's view; the other ranks wait for rank 0 as often.
    const double communication = std::max(0.0, exposed_sum - skew_sum);
    std::printf("of the exposed wait, %.3f s waited for a slower rank's backward and %.3f s for "
                "communication: %.1f%% of the reduction hidden behind backward\n",
                skew_sum / n, communication / n,
                100.0 * (1.0 - communication / communication_alone));
  }
  return 0;
}
