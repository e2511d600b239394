// Collectives of our MPI Communicator against the raw blocking MPI call,
// both measured in the same run on the same buffers, with algbw and busbw as
// nccl-tests defines them (github.com/NVIDIA/nccl-tests, doc/PERFORMANCE.md):
//   size   = the largest buffer of one rank in bytes (all-reduce, broadcast:
//            the buffer; reduce-scatter: the input; all-gather: the output;
//            all-to-all: the send buffer)
//   algbw  = size / time
//   busbw  = algbw * 2(n-1)/n (all-reduce), (n-1)/n (reduce-scatter,
//            all-gather, all-to-all), 1 (broadcast)
// Each operation is timed alone, starting after a barrier; its time is the
// slowest rank's. Ours, raw and nb run in `rounds` (default 3) interleaved
// rounds of up to 100 operations each; the table shows the fastest operation
// of each (on a machine other jobs load, bursts lengthen some operations but
// rarely all of them) and "median" the overhead of the median operations.
// "overhead" is our time over the raw blocking call's, minus one; "nb" is the raw non-blocking call (MPI_I... + MPI_Wait) — what
// our Work wraps for every collective but the all-reduces and reduce-scatters
// of at least kThreadedAllReduceBytes, which run as the blocking call on the group's
// collective thread (Open MPI runs non-blocking collectives with libnbc's
// algorithms, not the tuned blocking ones; the column tells that cost apart
// from ours).
//
//   mpirun -np 4 bench_comm [max_bytes (default 64 MiB)] [rounds (default 3)]
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/comm/watchdog.h"

namespace {

using tessera::DType;
using tessera::parallel::AbortJob;
using tessera::parallel::Communicator;
using tessera::parallel::ReduceOp;

struct Collective {
  const char* name;
  double bus_factor;  // busbw / algbw for n ranks
  // Runs one operation on `send`/`recv` of `size` bytes (counts derived inside).
  std::function<void(float*send, float*recv, size_t elements)> ours, raw, nonblocking;
};

// Appends the seconds of `iterations` operations, each on the slowest rank.
void TimeOps(const std::function<void()>& op, int iterations, std::vector<double>* seconds) {
  op();  // warm up
  std::vector<double> times(static_cast<size_t>(iterations));
  for (double& time : times) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    op();
    time = MPI_Wtime() - start;
  }
  MPI_Allreduce(MPI_IN_PLACE, times.data(), iterations, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  seconds->insert(seconds->end(), times.begin(), times.end());
}

double Fastest(const std::vector<double>& seconds) {
  return *std::min_element(seconds.begin(), seconds.end());
}

double Median(std::vector<double> seconds) {
  std::nth_element(seconds.begin(), seconds.begin() + seconds.size() / 2, seconds.end());
  return seconds[seconds.size() / 2];
}

void WaitFor(MPI_Request request) { MPI_Wait(&request, MPI_STATUS_IGNORE); }

void Check(Communicator& comm, absl::StatusOr<std::unique_ptr<tessera::parallel::Work>> work) {
  const absl::Status status = comm.Complete(std::move(work));
  if (!status.ok()) AbortJob(status);
}

}  // namespace

int main(int argc, char** argv) {
  auto runtime = tessera::parallel::MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok()) {
    std::fprintf(stderr, "%s\n", std::string(runtime.status().message()).c_str());
    return 5;
  }
  const size_t max_bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : size_t{64} << 20;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  auto world_or = (*runtime)->CreateWorld(absl::Seconds(600));
  if (!world_or.ok()) AbortJob(world_or.status());
  Communicator& comm = **world_or;
  MPI_Comm raw;
  MPI_Comm_dup(MPI_COMM_WORLD, &raw);
  const int n = comm.size();
  const double ring = n > 1 ? static_cast<double>(n - 1) / n : 0.0;
  const int block = n;  // per-rank blocks need counts divisible by n

  const std::vector<Collective> collectives = {
      {"all_reduce", 2 * ring,
       [&](float*, float* recv, size_t e) {
         Check(comm, comm.AllReduce(recv, e, DType::kF32, ReduceOp::kSum));
       },
       [&](float*, float* recv, size_t e) {
         MPI_Allreduce(MPI_IN_PLACE, recv, static_cast<int>(e), MPI_FLOAT, MPI_SUM, raw);
       },
       [&](float*, float* recv, size_t e) {
         MPI_Request r;
         MPI_Iallreduce(MPI_IN_PLACE, recv, static_cast<int>(e), MPI_FLOAT, MPI_SUM, raw, &r);
         WaitFor(r);
       }},
      {"reduce_scatter", ring,
       [&](float* send, float* recv, size_t e) {
         Check(comm, comm.ReduceScatter(send, recv, e / block, DType::kF32, ReduceOp::kSum));
       },
       [&](float* send, float* recv, size_t e) {
         MPI_Reduce_scatter_block(send, recv, static_cast<int>(e / block), MPI_FLOAT, MPI_SUM, raw);
       },
       [&](float* send, float* recv, size_t e) {
         MPI_Request r;
         MPI_Ireduce_scatter_block(send, recv, static_cast<int>(e / block), MPI_FLOAT, MPI_SUM, raw,
                                   &r);
         WaitFor(r);
       }},
      {"all_gather", ring,
       [&](float* send, float* recv, size_t e) {
         Check(comm, comm.AllGather(send, recv, e / block, DType::kF32));
       },
       [&](float* send, float* recv, size_t e) {
         const int count = static_cast<int>(e / block);
         MPI_Allgather(send, count, MPI_FLOAT, recv, count, MPI_FLOAT, raw);
       },
       [&](float* send, float* recv, size_t e) {
         const int count = static_cast<int>(e / block);
         MPI_Request r;
         MPI_Iallgather(send, count, MPI_FLOAT, recv, count, MPI_FLOAT, raw, &r);
         WaitFor(r);
       }},
      {"all_to_all", ring,
       [&](float* send, float* recv, size_t e) {
         Check(comm, comm.AllToAll(send, recv, e / block, DType::kF32));
       },
       [&](float* send, float* recv, size_t e) {
         const int count = static_cast<int>(e / block);
         MPI_Alltoall(send, count, MPI_FLOAT, recv, count, MPI_FLOAT, raw);
       },
       [&](float* send, float* recv, size_t e) {
         const int count = static_cast<int>(e / block);
         MPI_Request r;
         MPI_Ialltoall(send, count, MPI_FLOAT, recv, count, MPI_FLOAT, raw, &r);
         WaitFor(r);
       }},
      {"broadcast", 1.0,
       [&](float*, float* recv, size_t e) { Check(comm, comm.Broadcast(recv, e, DType::kF32, 0)); },
       [&](float*, float* recv, size_t e) {
         MPI_Bcast(recv, static_cast<int>(e), MPI_FLOAT, 0, raw);
       },
       [&](float*, float* recv, size_t e) {
         MPI_Request r;
         MPI_Ibcast(recv, static_cast<int>(e), MPI_FLOAT, 0, raw, &r);
         WaitFor(r);
       }},
  };

  std::vector<float> send(max_bytes / sizeof(float), 1.0f), recv(max_bytes / sizeof(float), 1.0f);
  if (comm.rank() == 0) {
    std::printf("# %d ranks; GB/s = 1e9 bytes/s; time per op in us (slowest rank, fastest op of "
                "%d rounds)\n",
                n, rounds);
    std::printf("%-15s %8s | %10s %7s %7s | %10s %7s %7s | %9s %9s | %10s\n", "collective", "size",
                "ours us", "algbw", "busbw", "raw us", "algbw", "busbw", "overhead", "median",
                "nb us");
  }
  for (const Collective& c : collectives) {
    for (size_t size = 4096; size <= max_bytes; size *= 4) {
      size_t elements = size / sizeof(float);
      elements -= elements % block;
      const size_t bytes = elements * sizeof(float);
      const int iterations =
          static_cast<int>(std::clamp<size_t>((size_t{128} << 20) / size, 2, 100));
      std::vector<double> ours_times, raw_times, nonblocking_times;
      for (int round = 0; round < rounds; ++round) {
        TimeOps([&] { c.nonblocking(send.data(), recv.data(), elements); }, iterations,
                &nonblocking_times);
        TimeOps([&] { c.ours(send.data(), recv.data(), elements); }, iterations, &ours_times);
        TimeOps([&] { c.raw(send.data(), recv.data(), elements); }, iterations, &raw_times);
      }
      const double ours = Fastest(ours_times), reference = Fastest(raw_times);
      const double nonblocking = Fastest(nonblocking_times);
      const double median = Median(ours_times) / Median(raw_times) - 1.0;
      if (comm.rank() == 0) {
        const double ours_alg = bytes / ours / 1e9, raw_alg = bytes / reference / 1e9;
        std::printf("%-15s %8s | %10.1f %7.3f %7.3f | %10.1f %7.3f %7.3f | %+8.1f%% %+8.1f%% | "
                    "%10.1f\n",
                    c.name,
                    size >= (1u << 20) ? absl::StrFormat("%d MiB", size >> 20).c_str()
                                       : absl::StrFormat("%d KiB", size >> 10).c_str(),
                    ours * 1e6, ours_alg, ours_alg * c.bus_factor, reference * 1e6, raw_alg,
                    raw_alg * c.bus_factor, 100.0 * (ours / reference - 1.0), 100.0 * median,
                    nonblocking * 1e6);
        std::fflush(stdout);
      }
    }
  }
  MPI_Comm_free(&raw);
  world_or->reset();
  return 0;
}
