// Column- and row-parallel linears over the world as the tp group (run at
// np 1, 2, 4), against the single-rank tessera::Linear computed on every rank
// from the same full inputs: outputs, dx and each rank's dW/db piece must
// equal the corresponding slices of the single-rank results.
#include "parallel/tensor_parallel/linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/time/time.h"
#include "runtime/base/errors.h"
#include "runtime/kernels/cpu/activation.h"
#include "runtime/nn/linear.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

constexpr uint64_t kSeed = 1234;

std::unique_ptr<MpiCommunicator> World() {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  TESSERA_CHECK(world.ok());
  return std::move(world).value();
}

// A deterministic, rank-independent [rows, cols] matrix.
Tensor Matrix(int64_t rows, int64_t cols, double phase) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<float>()[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i) + phase));
  }
  return t;
}

// Part `part` of `parts` of a row-major [rows, cols] matrix along `dim`
// (0: a block of rows, 1: a block of columns), as a contiguous vector.
std::vector<float> Slice(const Tensor& t, int64_t rows, int64_t cols, int dim, int part,
                         int parts) {
  const float* data = t.data<float>();
  std::vector<float> out;
  if (dim == 0) {
    const int64_t n = rows / parts;
    out.assign(data + part * n * cols, data + (part + 1) * n * cols);
  } else {
    const int64_t n = cols / parts;
    for (int64_t r = 0; r < rows; ++r) {
      out.insert(out.end(), data + r * cols + part * n, data + r * cols + (part + 1) * n);
    }
  }
  return out;
}

std::vector<float> Whole(const Tensor& t) {
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

Tensor FromVector(const std::vector<float>& v, int64_t rows, int64_t cols) {
  TESSERA_CHECK(static_cast<int64_t>(v.size()) == rows * cols);
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows, cols});
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

void CopyInto(const std::vector<float>& v, const Tensor& t) {
  ASSERT_EQ(static_cast<int64_t>(v.size()), t.numel());
  std::copy(v.begin(), v.end(), t.data<float>());
}

// Relative tolerance 1e-5 (absolute near zero).
void ExpectNear(const std::vector<float>& expected, const Tensor& actual, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what;
  ASSERT_EQ(static_cast<int64_t>(expected.size()), actual.numel()) << what;
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_NEAR(actual.data<float>()[i], expected[i], 1e-5 * std::max(1.0f, std::fabs(expected[i])))
        << what << " element " << i;
  }
}

Linear::Options ReferenceOptions(bool bias) {
  Linear::Options options;
  options.bias = bias;
  options.bias_init = ParamInit::Uniform(0.5f);  // nonzero, so a misplaced bias shows
  return options;
}

TensorParallelLinearOptions ParallelOptions(bool bias, bool sequence_parallel,
                                            bool gather_output = false) {
  TensorParallelLinearOptions options;
  options.bias = bias;
  options.bias_init = ParamInit::Uniform(0.5f);
  options.sequence_parallel = sequence_parallel;
  options.gather_output = gather_output;
  return options;
}

// ---------------------------------------------------------------------------

class ColumnParallelTest : public ::testing::TestWithParam<std::tuple<bool, bool, bool>> {};

TEST_P(ColumnParallelTest, ForwardAndBackwardEqualSlicesOfSingleRankLinear) {
  const auto [sequence_parallel, bias, gather_output] = GetParam();
  auto tp = World();
  const int rank = tp->rank(), size = tp->size();
  const int64_t in = 5, out = 12, rows = sequence_parallel ? 12 : 7;

  ParameterStore ref_store;
  Linear ref(ref_store, "up", in, out, ReferenceOptions(bias));
  ref_store.Finalize(kSeed);
  ref_store.ZeroGrads();
  Arena ref_arena;
  const Tensor x = Matrix(rows, in, 0.1);
  const Tensor dy = Matrix(rows, out, 0.7);
  const Tensor y_ref = ref.Forward(ref_arena, x);
  const Tensor dx_ref = ref.Backward(ref_arena, dy);

  ParameterStore store;
  auto layer = ColumnParallelLinear::Create(
      store, *tp, "up", in, out, ParallelOptions(bias, sequence_parallel, gather_output));
  ASSERT_TRUE(layer.ok()) << layer.status();
  store.Finalize(kSeed);
  store.ZeroGrads();
  // The pieces of the single-rank weights (see RegisterSplitParameter).
  CopyInto(Slice(ref_store.param(ref.weight_id()), out, in, 0, rank, size),
           store.param((*layer)->weight_id()));
  if (bias) {
    CopyInto(Slice(ref_store.param(ref.bias_id()), 1, out, 1, rank, size),
             store.param((*layer)->bias_id()));
  }

  Arena arena;
  const int64_t local_rows = sequence_parallel ? rows / size : rows;
  const Tensor x_in =
      sequence_parallel ? FromVector(Slice(x, rows, in, 0, rank, size), local_rows, in) : x;
  auto y = (*layer)->Forward(arena, x_in);
  ASSERT_TRUE(y.ok()) << y.status();
  ExpectNear(gather_output ? Whole(y_ref) : Slice(y_ref, rows, out, 1, rank, size), *y, "y");

  const Tensor dy_in =
      gather_output ? dy : FromVector(Slice(dy, rows, out, 1, rank, size), rows, out / size);
  auto dx = (*layer)->Backward(arena, dy_in);
  ASSERT_TRUE(dx.ok()) << dx.status();
  ExpectNear(sequence_parallel ? Slice(dx_ref, rows, in, 0, rank, size) : Whole(dx_ref), *dx, "dx");
  ExpectNear(Slice(ref_store.grad(ref.weight_id()), out, in, 0, rank, size),
             store.grad((*layer)->weight_id()), "dW");
  if (bias) {
    ExpectNear(Slice(ref_store.grad(ref.bias_id()), 1, out, 1, rank, size),
               store.grad((*layer)->bias_id()), "db");
  }
}

INSTANTIATE_TEST_SUITE_P(SequenceParallelBiasGatherOutput, ColumnParallelTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(),
                                            ::testing::Bool()));

// ---------------------------------------------------------------------------

class RowParallelTest : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(RowParallelTest, ForwardAndBackwardEqualSlicesOfSingleRankLinear) {
  const auto [sequence_parallel, bias] = GetParam();
  auto tp = World();
  const int rank = tp->rank(), size = tp->size();
  const int64_t in = 8, out = 7, rows = sequence_parallel ? 12 : 5;

  ParameterStore ref_store;
  Linear ref(ref_store, "down", in, out, ReferenceOptions(bias));
  ref_store.Finalize(kSeed);
  ref_store.ZeroGrads();
  Arena ref_arena;
  const Tensor x = Matrix(rows, in, 0.3);
  const Tensor dy = Matrix(rows, out, 1.1);
  const Tensor y_ref = ref.Forward(ref_arena, x);
  const Tensor dx_ref = ref.Backward(ref_arena, dy);

  ParameterStore store;
  auto layer = RowParallelLinear::Create(store, *tp, "down", in, out,
                                         ParallelOptions(bias, sequence_parallel));
  ASSERT_TRUE(layer.ok()) << layer.status();
  store.Finalize(kSeed);
  store.ZeroGrads();
  CopyInto(Slice(ref_store.param(ref.weight_id()), out, in, 1, rank, size),
           store.param((*layer)->weight_id()));
  if (bias) {
    // Replicated and registered under its global name: already equal.
    ExpectNear(Whole(ref_store.param(ref.bias_id())), store.param((*layer)->bias_id()),
               "initial bias");
  }

  Arena arena;
  auto y = (*layer)->Forward(arena, FromVector(Slice(x, rows, in, 1, rank, size), rows, in / size));
  ASSERT_TRUE(y.ok()) << y.status();
  ExpectNear(sequence_parallel ? Slice(y_ref, rows, out, 0, rank, size) : Whole(y_ref), *y, "y");

  const Tensor dy_in =
      sequence_parallel ? FromVector(Slice(dy, rows, out, 0, rank, size), rows / size, out) : dy;
  auto dx = (*layer)->Backward(arena, dy_in);
  ASSERT_TRUE(dx.ok()) << dx.status();
  ExpectNear(Slice(dx_ref, rows, in, 1, rank, size), *dx, "dx");
  ExpectNear(Slice(ref_store.grad(ref.weight_id()), out, in, 1, rank, size),
             store.grad((*layer)->weight_id()), "dW");
  if (bias) ExpectNear(Whole(ref_store.grad(ref.bias_id())), store.grad((*layer)->bias_id()), "db");
}

INSTANTIATE_TEST_SUITE_P(SequenceParallelBias, RowParallelTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

// ---------------------------------------------------------------------------

// Column-parallel up, GELU on the local hidden columns, row-parallel down:
// no collective between the two, the pair equals the two-Linear MLP.
class MlpPairTest : public ::testing::TestWithParam<bool> {};

TEST_P(MlpPairTest, ColumnThenRowEqualsSingleRankMlp) {
  const bool sequence_parallel = GetParam();
  auto tp = World();
  const int rank = tp->rank(), size = tp->size();
  const int64_t rows = 8, in = 6, hidden = 8, out = 5;

  ParameterStore ref_store;
  Linear ref_up(ref_store, "mlp.up", in, hidden, ReferenceOptions(true));
  Linear ref_down(ref_store, "mlp.down", hidden, out, ReferenceOptions(true));
  ref_store.Finalize(kSeed);
  ref_store.ZeroGrads();
  Arena ref_arena;
  const Tensor x = Matrix(rows, in, 0.2);
  const Tensor dy = Matrix(rows, out, 0.9);
  const Tensor h_ref = ref_up.Forward(ref_arena, x);
  Tensor a_ref = ref_arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden});
  cpu::GeluForward(h_ref.data<float>(), a_ref.data<float>(), h_ref.numel());
  const Tensor y_ref = ref_down.Forward(ref_arena, a_ref);
  const Tensor da_ref = ref_down.Backward(ref_arena, dy);
  Tensor dh_ref = ref_arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden});
  cpu::GeluBackward(da_ref.data<float>(), h_ref.data<float>(), dh_ref.data<float>(), h_ref.numel());
  const Tensor dx_ref = ref_up.Backward(ref_arena, dh_ref);

  ParameterStore store;
  const auto options = ParallelOptions(true, sequence_parallel);
  auto up = ColumnParallelLinear::Create(store, *tp, "mlp.up", in, hidden, options);
  auto down = RowParallelLinear::Create(store, *tp, "mlp.down", hidden, out, options);
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_TRUE(down.ok()) << down.status();
  store.Finalize(kSeed);
  store.ZeroGrads();
  CopyInto(Slice(ref_store.param(ref_up.weight_id()), hidden, in, 0, rank, size),
           store.param((*up)->weight_id()));
  CopyInto(Slice(ref_store.param(ref_up.bias_id()), 1, hidden, 1, rank, size),
           store.param((*up)->bias_id()));
  CopyInto(Slice(ref_store.param(ref_down.weight_id()), out, hidden, 1, rank, size),
           store.param((*down)->weight_id()));

  Arena arena;
  const int64_t local_rows = sequence_parallel ? rows / size : rows;
  const int64_t local_hidden = hidden / size;
  const Tensor x_in =
      sequence_parallel ? FromVector(Slice(x, rows, in, 0, rank, size), local_rows, in) : x;
  auto h = (*up)->Forward(arena, x_in);  // [rows, hidden/tp]
  ASSERT_TRUE(h.ok()) << h.status();
  Tensor a = arena.AllocateUninitialized(DType::kF32, Shape{rows, local_hidden});
  cpu::GeluForward(h->data<float>(), a.data<float>(), h->numel());
  auto y = (*down)->Forward(arena, a);
  ASSERT_TRUE(y.ok()) << y.status();
  ExpectNear(sequence_parallel ? Slice(y_ref, rows, out, 0, rank, size) : Whole(y_ref), *y, "y");

  const Tensor dy_in =
      sequence_parallel ? FromVector(Slice(dy, rows, out, 0, rank, size), local_rows, out) : dy;
  auto da = (*down)->Backward(arena, dy_in);
  ASSERT_TRUE(da.ok()) << da.status();
  Tensor dh = arena.AllocateUninitialized(DType::kF32, Shape{rows, local_hidden});
  cpu::GeluBackward(da->data<float>(), h->data<float>(), dh.data<float>(), h->numel());
  auto dx = (*up)->Backward(arena, dh);
  ASSERT_TRUE(dx.ok()) << dx.status();

  ExpectNear(sequence_parallel ? Slice(dx_ref, rows, in, 0, rank, size) : Whole(dx_ref), *dx, "dx");
  ExpectNear(Slice(ref_store.grad(ref_up.weight_id()), hidden, in, 0, rank, size),
             store.grad((*up)->weight_id()), "up dW");
  ExpectNear(Slice(ref_store.grad(ref_up.bias_id()), 1, hidden, 1, rank, size),
             store.grad((*up)->bias_id()), "up db");
  ExpectNear(Slice(ref_store.grad(ref_down.weight_id()), out, hidden, 1, rank, size),
             store.grad((*down)->weight_id()), "down dW");
  ExpectNear(Whole(ref_store.grad(ref_down.bias_id())), store.grad((*down)->bias_id()), "down db");
}

INSTANTIATE_TEST_SUITE_P(SequenceParallel, MlpPairTest, ::testing::Bool());

// ---------------------------------------------------------------------------

TEST(TensorParallelLinearTest, ZeroRowsGiveEmptyOutputsAndZeroGradients) {
  auto tp = World();
  const int size = tp->size();
  ParameterStore store;
  auto up = ColumnParallelLinear::Create(store, *tp, "up", 3, 4 * size,
                                         ParallelOptions(true, false, /*gather_output=*/true));
  auto down =
      RowParallelLinear::Create(store, *tp, "down", 4 * size, 3, ParallelOptions(true, true));
  ASSERT_TRUE(up.ok() && down.ok());
  store.Finalize(kSeed);
  store.ZeroGrads();
  Arena arena;
  auto h = (*up)->Forward(arena, Tensor::Empty(DType::kF32, Shape{0, 3}));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->shape(), (Shape{0, 4 * size}));
  auto y = (*down)->Forward(arena, Tensor::Empty(DType::kF32, Shape{0, 4}));
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{0, 3}));
  auto dx_down = (*down)->Backward(arena, Tensor::Empty(DType::kF32, Shape{0, 3}));
  ASSERT_TRUE(dx_down.ok()) << dx_down.status();
  EXPECT_EQ(dx_down->shape(), (Shape{0, 4}));
  auto dx_up = (*up)->Backward(arena, Tensor::Empty(DType::kF32, Shape{0, 4 * size}));
  ASSERT_TRUE(dx_up.ok()) << dx_up.status();
  EXPECT_EQ(dx_up->shape(), (Shape{0, 3}));
  for (int64_t i = 0; i < store.numel(); ++i) ASSERT_EQ(store.grads().data<float>()[i], 0.0f);
}

TEST(TensorParallelLinearTest, RegistersGlobalShapesSplitSpecsAndSlicesOfSingleRankInit) {
  auto tp = World();
  const int size = tp->size();
  ParameterStore store;
  auto up =
      ColumnParallelLinear::Create(store, *tp, "up", 3, 2 * size, ParallelOptions(true, false));
  auto down =
      RowParallelLinear::Create(store, *tp, "down", 2 * size, 5, ParallelOptions(true, false));
  ASSERT_TRUE(up.ok() && down.ok());
  store.Finalize(kSeed);
  const ParamInfo& w_up = store.info((*up)->weight_id());
  EXPECT_EQ(w_up.spec.kind, ParallelSpec::Kind::kSplit);
  EXPECT_EQ(w_up.spec.split_dim, 0);
  EXPECT_EQ(w_up.local_shape, (Shape{2, 3}));
  EXPECT_EQ(store.info((*up)->bias_id()).spec.split_dim, 0);
  EXPECT_EQ(store.info((*up)->bias_id()).local_shape, (Shape{2}));
  const ParamInfo& w_down = store.info((*down)->weight_id());
  EXPECT_EQ(w_down.spec.kind, ParallelSpec::Kind::kSplit);
  EXPECT_EQ(w_down.spec.split_dim, 1);
  EXPECT_EQ(w_down.local_shape, (Shape{5, 2}));
  const ParamInfo& b_down = store.info((*down)->bias_id());
  EXPECT_EQ(b_down.spec.kind, ParallelSpec::Kind::kReplicated);
  EXPECT_EQ(b_down.name, "down.bias");
  EXPECT_EQ(b_down.global_shape, (Shape{5}));
  EXPECT_EQ(w_up.name, "up.weight");
  EXPECT_EQ(w_up.global_shape, (Shape{2 * size, 3}));
  EXPECT_EQ(w_up.local_offset, (std::vector<int64_t>{2 * tp->rank(), 0}));
  EXPECT_EQ(w_down.global_shape, (Shape{5, 2 * size}));
  EXPECT_EQ(w_down.local_offset, (std::vector<int64_t>{0, 2 * tp->rank()}));
  ParameterStore ref_store;
  Linear ref_up(ref_store, "up", 3, 2 * size, ReferenceOptions(true));
  Linear ref_down(ref_store, "down", 2 * size, 5, ReferenceOptions(true));
  ref_store.Finalize(kSeed);
  // No copying: each rank's piece starts as its slice of the single-rank init.
  const int rank = tp->rank();
  ExpectNear(Slice(ref_store.param(ref_up.weight_id()), 2 * size, 3, 0, rank, size),
             store.param((*up)->weight_id()), "up W");
  ExpectNear(Slice(ref_store.param(ref_up.bias_id()), 1, 2 * size, 1, rank, size),
             store.param((*up)->bias_id()), "up b");
  ExpectNear(Slice(ref_store.param(ref_down.weight_id()), 5, 2 * size, 1, rank, size),
             store.param((*down)->weight_id()), "down W");
  ExpectNear(Whole(ref_store.param(ref_down.bias_id())), store.param((*down)->bias_id()),
             "down b");
}

TEST(TensorParallelLinearTest, IndivisibleSizesAreUsageErrorsNamingTheQuantity) {
  auto tp = World();
  const int size = tp->size();
  ParameterStore store;
  auto row_gather =
      RowParallelLinear::Create(store, *tp, "r", 4, 4, ParallelOptions(true, false, true));
  EXPECT_EQ(ExitCodeFor(row_gather.status()), 2);
  EXPECT_NE(row_gather.status().message().find("gather_output"), std::string::npos);
  EXPECT_EQ(ExitCodeFor(ColumnParallelLinear::Create(store, *tp, "c", 0, 4, {}).status()), 2);
  if (size == 1) return;  // everything divides by 1

  auto column = ColumnParallelLinear::Create(store, *tp, "c", 4, 2 * size + 1, {});
  EXPECT_EQ(ExitCodeFor(column.status()), 2);
  EXPECT_NE(column.status().message().find(
                "out_features of a column-parallel linear (" + std::to_string(2 * size + 1) +
                ") must be divisible by the tensor-parallel size " + std::to_string(size)),
            std::string::npos)
      << column.status();
  auto row = RowParallelLinear::Create(store, *tp, "r", 2 * size + 1, 4, {});
  EXPECT_EQ(ExitCodeFor(row.status()), 2);
  EXPECT_NE(row.status().message().find("in_features of a row-parallel linear"), std::string::npos);

  // Tokens not divisible by tp under sequence parallelism: every rank fails
  // before any collective.
  auto sp_row =
      RowParallelLinear::Create(store, *tp, "sp", 2 * size, 3, ParallelOptions(true, true));
  ASSERT_TRUE(sp_row.ok()) << sp_row.status();
  store.Finalize(kSeed);
  Arena arena;
  auto y = (*sp_row)->Forward(arena, Matrix(size + 1, 2, 0.0));
  EXPECT_EQ(ExitCodeFor(y.status()), 2);
  EXPECT_NE(y.status().message().find("rows (tokens) (" + std::to_string(size + 1) + ")"),
            std::string::npos)
      << y.status();
  // A wrong input width is an InvalidArgument naming the expected shape.
  auto bad = (*sp_row)->Forward(arena, Matrix(size, 3, 0.0));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("[rows, 2]"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace tessera::parallel

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
