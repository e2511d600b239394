// The row-sharded embedding table (parallel/embedding/row_sharded_table.h,
// HSTU's item table) at the number of ranks mpirun gives it: lookup,
// backward and the sparse Adam step of the touched rows, in rows per
// second, against MPI_Alltoall moving the same bytes.
//
// Every rank looks up `ids` ids per iteration, drawn uniformly from the
// table's rows (seeded by rank and iteration, so every run draws the same
// ones); the table dedupes them (distinct ids per rank are reported) and
// exchanges, per rank, 8 bytes per distinct id and then dim * 4 bytes per
// distinct row; backward sends the rows' summed gradients back (dim * 4
// bytes per distinct row) and the owners accumulate them; the step updates
// every touched row with Adam. "raw a2a" is MPI_Alltoall of the lookup's
// bytes (ids, then rows) in equal blocks over the ranks, sized by the rank
// with the most distinct ids: the collective's cost for that traffic,
// without the table's sorting, routing and copies.
// Each operation is timed alone after a barrier; its time is the slowest
// rank's; the table shows the median of `reps` iterations after one warm-up.
//
//   mpirun -np P bench_row_sharded_table [rows (default 1000000)] [dim (64)]
//     [ids per rank (65536)] [reps (10)]
//
// One rank uses no communicator: the table a single-process run holds.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/comm/watchdog.h"
#include "parallel/embedding/row_sharded_table.h"
#include "runtime/base/random.h"

namespace {

using tessera::parallel::AbortJob;
using tessera::parallel::RowShardedTable;
using tessera::parallel::SparseOptimizerOptions;

void Check(const absl::Status& status) {
  if (!status.ok()) AbortJob(status);
}

// Seconds of op() on the slowest rank, started after a barrier.
double TimeOnce(const std::function<void()>& op) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = MPI_Wtime();
  op();
  double seconds = MPI_Wtime() - start;
  MPI_Allreduce(MPI_IN_PLACE, &seconds, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return seconds;
}

double Median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  auto runtime = tessera::parallel::MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok()) {
    std::fprintf(stderr, "%s\n", std::string(runtime.status().message()).c_str());
    return 5;
  }
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 1000000;
  const int64_t dim = argc > 2 ? std::atoll(argv[2]) : 64;
  const int64_t ids_per_rank = argc > 3 ? std::atoll(argv[3]) : 65536;
  const int reps = argc > 4 ? std::max(1, std::atoi(argv[4])) : 10;
  auto world = (*runtime)->CreateWorld(absl::Seconds(600));
  if (!world.ok()) AbortJob(world.status());
  const int p = (*world)->size(), rank = (*world)->rank();
  tessera::parallel::Communicator* group = p > 1 ? world->get() : nullptr;
  RowShardedTable table(group, nullptr, "bench_table", rows, dim, 0.02f, 1);
  SparseOptimizerOptions adam;  // Adam, lr 1e-3, betas (0.9, 0.98)

  std::vector<int64_t> ids(static_cast<size_t>(ids_per_rank));
  std::vector<float> out(static_cast<size_t>(ids_per_rank * dim));
  std::vector<float> dout(out.size(), 1e-3f);
  std::vector<double> lookup, backward, step, raw;
  double distinct_sum = 0, touched_sum = 0, raw_bytes = 0;
  std::vector<char> send, recv;
  for (int it = 0; it <= reps; ++it) {  // iteration 0 warms up
    for (int64_t i = 0; i < ids_per_rank; ++i) {
      const uint64_t key = tessera::Mix64(static_cast<uint64_t>(rank) * 1000003 + it);
      ids[i] = static_cast<int64_t>(tessera::Mix64(key ^ tessera::Mix64(static_cast<uint64_t>(i))) %
                                    static_cast<uint64_t>(rows));
    }
    std::vector<int64_t> unique(ids);
    std::sort(unique.begin(), unique.end());
    const int64_t distinct = std::unique(unique.begin(), unique.end()) - unique.begin();
    const double t_lookup = TimeOnce([&] { Check(table.Lookup(ids, out.data())); });
    const double t_backward = TimeOnce([&] { Check(table.Backward(dout.data())); });
    const int64_t touched = table.num_touched();
    const double t_step = TimeOnce([&] { Check(table.Step(adam, it + 1, 1.0)); });
    // The lookup's bytes in equal blocks, ids then rows, sized by the rank
    // with the most distinct ids (every rank must pass the same counts).
    int64_t most = distinct;
    MPI_Allreduce(MPI_IN_PLACE, &most, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    const int64_t block_ids = (most + p - 1) / p;
    const size_t id_bytes = static_cast<size_t>(block_ids) * 8;
    const size_t row_bytes = static_cast<size_t>(block_ids * dim) * 4;
    send.assign((id_bytes + row_bytes) * p, 1);
    recv.resize(send.size());
    const double t_raw = TimeOnce([&] {
      MPI_Alltoall(send.data(), static_cast<int>(id_bytes), MPI_BYTE, recv.data(),
                   static_cast<int>(id_bytes), MPI_BYTE, MPI_COMM_WORLD);
      MPI_Alltoall(send.data(), static_cast<int>(row_bytes), MPI_BYTE, recv.data(),
                   static_cast<int>(row_bytes), MPI_BYTE, MPI_COMM_WORLD);
    });
    double counts[2] = {static_cast<double>(distinct), static_cast<double>(touched)};
    MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    raw_bytes += static_cast<double>(id_bytes + row_bytes) * p;
    if (it == 0) {
      raw_bytes = 0;
      continue;
    }
    lookup.push_back(t_lookup);
    backward.push_back(t_backward);
    step.push_back(t_step);
    raw.push_back(t_raw);
    distinct_sum += counts[0];
    touched_sum += counts[1];
  }
  if (rank == 0) {
    const double global_ids = static_cast<double>(ids_per_rank) * p;
    const double distinct = distinct_sum / reps / p;  // per rank
    const double touched = touched_sum / reps;        // over the table
    const double bytes = distinct * (8.0 + 4.0 * dim);  // a rank's lookup exchange
    const double sent = raw_bytes / reps;                // a rank's raw all-to-all
    const double l = Median(lookup), b = Median(backward), s = Median(step), r = Median(raw);
    std::printf(
        "ranks %d | rows %lld dim %lld | ids/rank %lld (distinct %.0f) | lookup %.2f ms "
        "%.2f Mids/s | backward %.2f ms | step %.2f ms over %.0f rows, %.2f Mrows/s | "
        "lookup+backward+step %.2f Mids/s | lookup exchange %.2f MB/rank | raw a2a of %.2f "
        "MB/rank %.2f ms (%.2f GB/s) | lookup / raw %.1fx\n",
        p, static_cast<long long>(rows), static_cast<long long>(dim),
        static_cast<long long>(ids_per_rank), distinct, 1e3 * l, global_ids / l / 1e6, 1e3 * b,
        1e3 * s, touched, touched / s / 1e6, global_ids / (l + b + s) / 1e6, bytes / 1e6,
        sent / 1e6, 1e3 * r, sent / r / 1e9, l / r);
  }
  return 0;
}
