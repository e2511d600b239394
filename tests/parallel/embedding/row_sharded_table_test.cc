// The row-sharded table against one unsharded table (run at np 1, 2, 3, 8).
//
// Oracle: every rank keeps the whole table, initialised as the sharded one is
// (CounterNormal by global index), and replays every rank's lookups (each
// rank's ids and output gradients are generated from (rank, step) alone):
// the lookup must return the whole table's rows; after each step every
// rank's rows must equal the whole table's, updated by dense Adam (or
// row-wise Adagrad) restricted to the rows some rank touched, with each
// row's gradient summed over every lookup of it on every rank. The ids
// include duplicates, rows owned by no rank's lookup, ids owned by ranks
// that look nothing up, and a rank with an empty batch.
#include "parallel/embedding/row_sharded_table.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "absl/time/time.h"
#include "parallel/comm/staged_communicator.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"
#include "runtime/tensor/arena.h"
#include "tests/parallel/comm/mpi_test_main.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

constexpr int64_t kRows = 37, kDim = 5;
constexpr float kStd = 0.5f;

std::unique_ptr<MpiCommunicator> World() {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  TESSERA_CHECK(world.ok());
  return std::move(world).value();
}

// Rank q's ids at `step`: rank 1 looks nothing up at step 1; ids repeat; only
// rows below 30 are ever looked up (rows 30..36 stay untouched).
std::vector<int64_t> Ids(int q, int step) {
  if (q == 1 && step == 1) return {};
  std::mt19937 gen(100u * static_cast<uint32_t>(q) + static_cast<uint32_t>(step));
  std::uniform_int_distribution<int64_t> row(0, 29);
  std::vector<int64_t> ids(3 + (q + step) % 5);
  for (int64_t& id : ids) id = row(gen);
  ids.push_back(ids[0]);  // a duplicate
  return ids;
}

std::vector<float> Dout(int q, int step, size_t n) {
  std::mt19937 gen(7919u * static_cast<uint32_t>(q) + static_cast<uint32_t>(step));
  std::uniform_real_distribution<float> value(-1, 1);
  std::vector<float> d(n * kDim);
  for (float& x : d) x = value(gen);
  return d;
}

// The whole table with a dense optimizer restricted to touched rows.
struct WholeTable {
  std::vector<double> values, m, v;
  explicit WholeTable(int64_t rows = kRows)
      : values(rows * kDim), m(rows * kDim, 0), v(rows * kDim, 0) {
    for (int64_t i = 0; i < rows * kDim; ++i) {
      values[i] = kStd * CounterNormal(Mix64(0) ^ HashName("items"), static_cast<uint64_t>(i));
    }
  }
  void Step(const std::map<int64_t, std::vector<double>>& grads, const SparseOptimizerOptions& o,
            int t) {
    for (const auto& [row, g] : grads) {
      if (o.kind == SparseOptimizerOptions::Kind::kAdam) {
        for (int64_t d = 0; d < kDim; ++d) {
          const int64_t i = row * kDim + d;
          m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[d];
          v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[d] * g[d];
          values[i] -= o.lr * (m[i] / (1 - std::pow(o.beta1, t))) /
                       (std::sqrt(v[i] / (1 - std::pow(o.beta2, t))) + o.eps);
        }
      } else {
        double mean_square = 0;
        for (double x : g) mean_square += x * x / kDim;
        v[row * kDim] += mean_square;
        for (int64_t d = 0; d < kDim; ++d) {
          values[row * kDim + d] -= o.lr * g[d] / (std::sqrt(v[row * kDim]) + o.eps);
        }
      }
    }
  }
};

// Lookup, or with `distinct` LookupDistinct (checked: the distinct ids
// ascending, each once, every position's slot holding its id's row) and
// the rows expanded by the slots.
std::vector<float> LookupRows(RowShardedTable& table, const std::vector<int64_t>& ids,
                              bool distinct, std::vector<int32_t>* slots) {
  std::vector<float> out(ids.size() * kDim, NAN);
  if (!distinct) {
    EXPECT_TRUE(table.Lookup(ids, out.data()).ok());
    return out;
  }
  std::vector<float> rows;
  EXPECT_TRUE(table.LookupDistinct(ids, &rows, slots).ok());
  std::vector<int64_t> unique(ids.begin(), ids.end());
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  EXPECT_EQ(rows.size(), unique.size() * kDim);
  EXPECT_EQ(slots->size(), ids.size());
  for (size_t i = 0; i < ids.size() && i < slots->size(); ++i) {
    const int32_t slot = (*slots)[i];
    EXPECT_EQ(unique[slot], ids[i]) << "position " << i;
    std::copy_n(rows.data() + slot * kDim, kDim, out.data() + i * kDim);
  }
  return out;
}

// `rows`: kRows dedupes a lookup by marking rows; a table of many more rows
// than ids looked up (> 8 per id) by sorting the ids. `distinct`: through
// LookupDistinct and BackwardDistinct (the gradients summed per distinct id
// by the caller, as HSTU does on its device).
void RunSteps(const SparseOptimizerOptions& options, int64_t rows = kRows,
              bool distinct = false) {
  auto world = World();
  const int p = world->size(), me = world->rank();
  RowShardedTable table(*world, "items", rows, kDim, kStd);
  WholeTable whole(rows);
  for (int step = 1; step <= 4; ++step) {
    const std::vector<int64_t> ids = Ids(me, step);
    std::vector<int32_t> slots;
    const std::vector<float> out = LookupRows(table, ids, distinct, &slots);
    for (size_t i = 0; i < ids.size(); ++i)
      for (int64_t d = 0; d < kDim; ++d) {
        ASSERT_NEAR(out[i * kDim + d], whole.values[ids[i] * kDim + d], 1e-5)
            << "step " << step << " id " << ids[i];
      }
    const std::vector<float> dout = Dout(me, step, ids.size());
    if (distinct) {
      const std::set<int64_t> distinct_ids(ids.begin(), ids.end());
      std::vector<float> summed(distinct_ids.size() * kDim, 0.0f);
      for (size_t i = 0; i < ids.size(); ++i)
        for (int64_t d = 0; d < kDim; ++d) summed[slots[i] * kDim + d] += dout[i * kDim + d];
      ASSERT_TRUE(table.BackwardDistinct(summed.data()).ok());
    } else {
      ASSERT_TRUE(table.Backward(dout.data()).ok());
    }
    std::map<int64_t, std::vector<double>> grads;
    for (int q = 0; q < p; ++q) {
      const std::vector<int64_t> qids = Ids(q, step);
      const std::vector<float> qd = Dout(q, step, qids.size());
      for (size_t i = 0; i < qids.size(); ++i) {
        std::vector<double>& g = grads[qids[i]];
        g.resize(kDim, 0.0);
        for (int64_t d = 0; d < kDim; ++d) g[d] += qd[i * kDim + d];
      }
    }
    // The owner holds the touched rows' summed gradients, and only those.
    for (const auto& [row, g] : table.touched()) {
      ASSERT_TRUE(grads.count(row)) << row;
      for (int64_t d = 0; d < kDim; ++d) ASSERT_NEAR(g[d], grads[row][d], 1e-5);
    }
    int64_t owned_touched = 0;
    for (const auto& entry : grads) owned_touched += table.Owner(entry.first) == me;
    ASSERT_EQ(static_cast<int64_t>(table.touched().size()), owned_touched);
    ASSERT_TRUE(table.Step(options, step).ok());
    whole.Step(grads, options, step);
    for (int64_t row = table.first_row(); row < table.end_row(); ++row)
      for (int64_t d = 0; d < kDim; ++d) {
        ASSERT_NEAR(table.local_rows()[(row - table.first_row()) * kDim + d],
                    whole.values[row * kDim + d], 1e-5)
            << "after step " << step << ", row " << row;
      }
  }
  // Rows no rank looked up never moved from their initial values.
  WholeTable initial(rows);
  for (int64_t row = std::max<int64_t>(30, table.first_row()); row < table.end_row(); ++row) {
    EXPECT_EQ(table.local_rows()[(row - table.first_row()) * kDim],
              static_cast<float>(initial.values[row * kDim]));
  }
}

TEST(RowShardedTable, LookupsAndSparseAdamMatchOneTableWithAdamOnTouchedRows) {
  SparseOptimizerOptions options;
  options.lr = 0.05;
  RunSteps(options);
}

TEST(RowShardedTable, ATableOfManyMoreRowsThanIdsDedupesBySortingToTheSameResult) {
  SparseOptimizerOptions options;
  options.lr = 0.05;
  RunSteps(options, /*rows=*/20000);
}

TEST(RowShardedTable, TheDistinctLookupAndBackwardMatchOneTable) {
  SparseOptimizerOptions adam;
  adam.lr = 0.05;
  RunSteps(adam, kRows, /*distinct=*/true);
  RunSteps(adam, 1000, /*distinct=*/true);  // dedupe by sorting
}

TEST(RowShardedTable, RowwiseAdagradMatchesOneTable) {
  SparseOptimizerOptions options;
  options.kind = SparseOptimizerOptions::Kind::kRowwiseAdagrad;
  options.lr = 0.1;
  RunSteps(options);
}

// A host copy of `t` (device memory of `backend`).
std::vector<float> ToHost(Backend& backend, const Tensor& t) {
  std::vector<float> host(static_cast<size_t>(t.numel()));
  if (!host.empty()) backend.CopyToHost(host.data(), t.address(), t.bytes());
  return host;
}

// The device-resident table (rows, state and gradients in a pretend
// device's memory, rows and gradients exchanged over an MPI group staged
// through host memory) against the host table through the same four steps
// of lookups: the same distinct rows, touched gradients, updated rows and
// checkpoint pieces, bit for bit; and each table's checkpoint pieces load
// into the other placement.
void DeviceMatchesHost(const SparseOptimizerOptions& options, int64_t rows) {
  auto world = World();
  const int me = world->rank();
  PretendDeviceBackend device;
  StagedCommunicator staged(*world, device);
  RowShardedTable host(*world, "items", rows, kDim, kStd);
  RowShardedTable on_device(&staged, nullptr, "items", rows, kDim, kStd, 0, &device);
  host.set_options(options, options.lr);
  on_device.set_options(options, options.lr);
  ASSERT_EQ(on_device.HostRows(), host.local_rows());
  Arena arena(device);
  for (int step = 1; step <= 4; ++step) {
    // Two micro-batches a step: the touched rows' gradients accumulate.
    for (int micro = 0; micro < 2; ++micro) {
      arena.Reset();
      const std::vector<int64_t> ids = Ids(me, 2 * step + micro - 1);  // rank 1: none at first
      std::vector<float> host_rows;
      std::vector<int32_t> host_slots, device_slots;
      ASSERT_TRUE(host.LookupDistinct(ids, &host_rows, &host_slots).ok());
      Tensor device_rows;
      ASSERT_TRUE(on_device.LookupDistinctOn(arena, ids, &device_rows, &device_slots).ok());
      ASSERT_EQ(ToHost(device, device_rows), host_rows) << "step " << step;
      ASSERT_EQ(device_slots, host_slots);
      const std::vector<float> grads = Dout(me, 2 * step + micro, host_rows.size() / kDim);
      ASSERT_TRUE(host.BackwardDistinct(grads.data()).ok());
      Tensor device_grads = arena.AllocateUninitialized(DType::kF32, device_rows.shape());
      if (!grads.empty()) {
        device.CopyToDevice(device_grads.address(), grads.data(), device_grads.bytes());
      }
      ASSERT_TRUE(on_device.BackwardDistinctOn(arena, device_grads).ok());
    }
    ASSERT_EQ(on_device.touched(), host.touched()) << "step " << step;
    ASSERT_TRUE(host.Step(options.lr, 3.0, step).ok());  // gradients divided by 3
    ASSERT_TRUE(on_device.Step(options.lr, 3.0, step).ok());
    ASSERT_EQ(on_device.num_touched(), 0);
    ASSERT_EQ(on_device.HostRows(), host.local_rows()) << "after step " << step;
  }
  std::vector<SavePiece> host_pieces, device_pieces;
  host.AppendSnapshot(&host_pieces);
  on_device.AppendSnapshot(&device_pieces);
  ASSERT_EQ(device_pieces.size(), host_pieces.size());
  for (size_t i = 0; i < host_pieces.size(); ++i) {
    EXPECT_EQ(device_pieces[i].desc.kind, host_pieces[i].desc.kind);
    EXPECT_EQ(device_pieces[i].data, host_pieces[i].data) << host_pieces[i].desc.kind;
  }
  // Across placements: a fresh device table takes the host table's pieces
  // (and a fresh host table the device's), then both make one more step.
  RowShardedTable device_loaded(&staged, nullptr, "items", rows, kDim, kStd, 0, &device);
  RowShardedTable host_loaded(*world, "items", rows, kDim, kStd);
  device_loaded.set_options(options, options.lr);
  host_loaded.set_options(options, options.lr);
  const std::vector<LoadPiece> device_targets = device_loaded.LoadTargets(false);
  const std::vector<LoadPiece> host_targets = host_loaded.LoadTargets(false);
  ASSERT_EQ(device_targets.size(), host_pieces.size());
  for (size_t i = 0; i < host_pieces.size(); ++i) {
    std::copy(host_pieces[i].data.begin(), host_pieces[i].data.end(), device_targets[i].data);
    std::copy(device_pieces[i].data.begin(), device_pieces[i].data.end(), host_targets[i].data);
  }
  ASSERT_TRUE(device_loaded.FinishLoad().ok());
  ASSERT_TRUE(host_loaded.FinishLoad().ok());
  for (RowShardedTable* table : {&host, &host_loaded, &device_loaded}) {
    arena.Reset();
    const std::vector<int64_t> ids = Ids(me, 20);
    Tensor looked_up;
    std::vector<int32_t> slots;
    ASSERT_TRUE(table->LookupDistinctOn(arena, ids, &looked_up, &slots).ok());
    const std::vector<float> grads = Dout(me, 20, static_cast<size_t>(looked_up.dim(0)));
    Tensor dgrads = arena.AllocateUninitialized(DType::kF32, looked_up.shape());
    if (!grads.empty()) device.CopyToDevice(dgrads.address(), grads.data(), dgrads.bytes());
    ASSERT_TRUE(table->BackwardDistinctOn(arena, dgrads).ok());
    ASSERT_TRUE(table->Step(options.lr, 1.0, 5).ok());
  }
  EXPECT_EQ(device_loaded.HostRows(), host.local_rows());
  EXPECT_EQ(host_loaded.local_rows(), host.local_rows());
}

TEST(RowShardedTable, TheDeviceResidentTableEqualsTheHostTableBitForBit) {
  SparseOptimizerOptions adam;
  adam.lr = 0.05;
  DeviceMatchesHost(adam, kRows);
  DeviceMatchesHost(adam, 1000);  // dedupe by sorting
  SparseOptimizerOptions adagrad;
  adagrad.kind = SparseOptimizerOptions::Kind::kRowwiseAdagrad;
  adagrad.lr = 0.1;
  DeviceMatchesHost(adagrad, kRows);
}

TEST(RowShardedTable, AnIdOutsideTheTableIsADataErrorNamingIt) {
  auto world = World();
  RowShardedTable table(*world, "items", kRows, kDim, kStd);
  std::vector<float> out(kDim);
  const std::vector<int64_t> bad = {kRows};
  const absl::Status status = table.Lookup(bad, out.data());  // no collective is started
  EXPECT_EQ(ExitCodeFor(status), 3);
  EXPECT_NE(std::string(status.message()).find("id 37 is outside [0, 37)"), std::string::npos);
}

}  // namespace
}  // namespace tessera::parallel

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
