// The HSTU encoder + sampled softmax as one function of every parameter:
// its backward against central differences (fp32 forward, dropout on: the
// masks are counter-based, so the perturbed forwards drop the same
// elements); the micro-batch slicing against hand-worked histories; and a
// user's outputs independent of the other users in its batch.
#include "models/hstu/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "models/hstu/sampled_softmax.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::hstu {
namespace {

using cpu::test::RandomFloats;

Tensor I64(const std::vector<int64_t>& v) {
  Tensor t = Tensor::Empty(DType::kI64, Shape{static_cast<int64_t>(v.size())});
  std::copy(v.begin(), v.end(), t.data<int64_t>());
  return t;
}

TEST(HstuBatch, MicroBatchTakesEveryMthRowHoldsOutAndCutsToMaxLen) {
  InteractionBatch share;
  // Four users: 1 event, 5 events, 3 events, 2 events.
  share.offsets = I64({0, 1, 6, 9, 11});
  share.item_ids = I64({7, 10, 11, 12, 13, 14, 20, 21, 22, 30, 31});
  share.timestamps = I64({5, 100, 101, 102, 103, 104, 200, 201, 202, 300, 301});
  // Micro-batch 1 of 2 (two users each): rows 1 and 3; replica 1 of 3.
  const HstuBatch b = TrainingMicroBatch(share, {2, 1, 1, 3, /*holdout=*/1, /*max_len=*/2});
  // Row 1 keeps 10..13 (14 held out), then its last 3 events 11, 12, 13:
  // tokens 11, 12 predicting 12, 13. Row 3 keeps 30: no token.
  EXPECT_EQ(b.offsets, (std::vector<int64_t>{0, 2, 2}));
  EXPECT_EQ(b.items, (std::vector<int32_t>{11, 12}));
  EXPECT_EQ(b.targets, (std::vector<int32_t>{12, 13}));
  EXPECT_EQ(b.positions, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(b.timestamps, (std::vector<int64_t>{101, 102}));
  EXPECT_EQ(b.next_timestamps, (std::vector<int64_t>{103, 0}));
  // Global position 1 * 3 + 1 = 4: keys 4 * max_len + position.
  EXPECT_EQ(b.token_keys, (std::vector<uint64_t>{8, 9}));
}

HstuConfig TinyConfig() {
  HstuConfig c;
  c.set_num_items(9);
  c.set_embedding_dim(6);
  c.set_num_blocks(2);
  c.set_num_heads(2);
  c.set_attention_dim(2);
  c.set_linear_dim(3);
  c.set_max_len(4);
  c.set_num_time_buckets(16);
  c.set_dropout(0.3f);
  c.set_num_negatives(5);
  c.set_temperature(0.5f);
  return c;
}

HstuBatch Users(bool with_first) {
  HstuBatch b;
  if (with_first) {
    AppendTrainingUser(std::vector<int64_t>{1, 2, 3, 4, 5, 6}, std::vector<int64_t>{10, 20, 400, 900, 5000, 7000}, 4, 0, b);
  }
  AppendTrainingUser(std::vector<int64_t>{8, 0}, std::vector<int64_t>{50, 60}, 4, 1, b);
  AppendTrainingUser(std::vector<int64_t>{3, 7, 3}, std::vector<int64_t>{1, 100000, 100001}, 4, 2, b);
  return b;
}

// The encoder and a whole item table (the row-sharded table of one process
// is this table: rows looked up by id, row gradients added per id).
struct TinyModel {
  explicit TinyModel(const HstuConfig& config)
      : model(*Hstu::Create(config, store)),
        table(RandomFloats(config.num_items() * config.embedding_dim(), 5, -0.5, 0.5)) {
    store.Finalize(3);
    // Larger than the initial values, so every nonlinearity matters.
    const auto values = RandomFloats(store.numel(), 4, -0.5, 0.5);
    std::copy(values.begin(), values.end(), store.values().data<float>());
  }
  // table[ids], [ids.size(), D].
  std::vector<float> Rows(const std::vector<int32_t>& ids) const {
    const int64_t d = model->dim();
    std::vector<float> rows(ids.size() * d);
    for (size_t i = 0; i < ids.size(); ++i) {
      std::copy_n(table.data() + ids[i] * d, d, rows.data() + i * d);
    }
    return rows;
  }
  // The whole table as a tensor: the loss's distinct rows.
  Tensor Table() const {
    Tensor t = Tensor::Empty(DType::kF32, Shape{model->num_items(), model->dim()});
    std::copy(table.begin(), table.end(), t.data<float>());
    return t;
  }
  ParameterStore store;
  std::unique_ptr<Hstu> model;
  std::vector<float> table;  // [num_items, D]
};

// The candidates' slots in the whole table: their ids.
Tensor Slots(const Candidates& c) {
  Tensor t = Tensor::Empty(DType::kI32, Shape{static_cast<int64_t>(c.ids.size())});
  std::copy(c.ids.begin(), c.ids.end(), t.data<int32_t>());
  return t;
}

// Sum of the per-token losses at the store's and the table's current values.
double LossSum(TinyModel& s, const HstuBatch& batch, const Candidates& c, float temperature) {
  Arena arena;
  const DropoutDraw dropout{0.3f, 5, 2};
  const std::vector<float> inputs = s.Rows(batch.items);
  Tensor out = *s.model->Forward(arena, batch, inputs.data(), &dropout, /*record=*/false);
  SampledSoftmax loss(s.model->dim(), temperature);
  double mean = 0;  // host memory: the CPU backend's
  loss.Forward(arena, out, s.Table(), Slots(c), c, &mean);
  return mean * batch.tokens();
}

// The gradient of LossSum: the store's in its grads, the table's returned.
std::vector<float> Gradients(TinyModel& s, const HstuBatch& batch, const Candidates& c,
                             float temperature) {
  Arena arena;
  const DropoutDraw dropout{0.3f, 5, 2};
  const std::vector<float> inputs = s.Rows(batch.items);
  Tensor out = *s.model->Forward(arena, batch, inputs.data(), &dropout);
  SampledSoftmax loss(s.model->dim(), temperature);
  const Tensor table = s.Table();
  double mean = 0;
  loss.Forward(arena, out, table, Slots(c), c, &mean);
  s.store.ZeroGrads();
  std::vector<float> dinputs(inputs.size(), NAN);
  Tensor dtable = Tensor::Empty(DType::kF32, table.shape());  // the candidates' part
  Tensor dout = loss.Backward(arena, dtable, 1.0f);
  EXPECT_TRUE(s.model->Backward(dout, dinputs.data()).ok());
  const int64_t d = s.model->dim();
  std::vector<float> grads(dtable.data<float>(), dtable.data<float>() + dtable.numel());
  for (size_t i = 0; i < batch.items.size(); ++i) {  // the inputs' part
    for (int64_t k = 0; k < d; ++k) grads[batch.items[i] * d + k] += dinputs[i * d + k];
  }
  return grads;
}

// Central differences in fp32 on a sample of `n` values (error of order
// 1e-7 * loss / h) against `grads`.
void ExpectFiniteDifferences(TinyModel& s, const HstuBatch& batch, const Candidates& c,
                             float temperature, const std::string& name, float* values,
                             const float* grads, int64_t n) {
  const float h = 2e-3f;
  double max_diff = 0, max_grad = 0;
  for (int64_t e = 0; e < n; e += std::max<int64_t>(1, n / 12)) {
    float& v = values[e];
    const float saved = v;
    v = saved + h;
    const double plus = LossSum(s, batch, c, temperature);
    v = saved - h;
    const double minus = LossSum(s, batch, c, temperature);
    v = saved;
    const double want = (plus - minus) / (2.0 * h);
    max_diff = std::max(max_diff, std::abs(grads[e] - want));
    max_grad = std::max(max_grad, std::abs(want));
  }
  EXPECT_GT(max_grad, 1e-4) << name << " has no gradient to compare";
  EXPECT_LT(max_diff / max_grad, 2e-2) << name;
}

TEST(Hstu, WholeModelGradientMatchesFiniteDifferences) {
  const HstuConfig config = TinyConfig();
  TinyModel s(config);
  const HstuBatch batch = Users(true);
  const Candidates c = SampleCandidates(batch, config.num_negatives(), config.num_items(), 5, 2);
  const std::vector<float> dtable = Gradients(s, batch, c, config.temperature());
  float* values = s.store.values().data<float>();
  const float* grads = s.store.grads().data<float>();
  for (const ParamInfo& info : s.store.infos()) {
    ExpectFiniteDifferences(s, batch, c, config.temperature(), info.name, values + info.offset,
                            grads + info.offset, info.global_shape.numel());
  }
  // Item rows reached as inputs and as candidates.
  ExpectFiniteDifferences(s, batch, c, config.temperature(), Hstu::kItemTable, s.table.data(),
                          dtable.data(), static_cast<int64_t>(s.table.size()));
}

TEST(Hstu, AUsersOutputsDoNotDependOnTheOtherUsersOfItsBatch) {
  const HstuConfig config = TinyConfig();
  TinyModel s(config);
  const DropoutDraw dropout{0.3f, 5, 2};
  Arena a1, a2;
  const HstuBatch with_first = Users(true), without = Users(false);
  const std::vector<float> rows_both = s.Rows(with_first.items), rows_alone = s.Rows(without.items);
  const Tensor both = *s.model->Forward(a1, with_first, rows_both.data(), &dropout, false);
  const Tensor alone = *s.model->Forward(a2, without, rows_alone.data(), &dropout, false);
  const int64_t first = Users(true).offsets[1];  // the first user's tokens come first
  ASSERT_EQ(both.dim(0) - first, alone.dim(0));
  for (int64_t i = 0; i < alone.numel(); ++i) {
    ASSERT_NEAR(both.data<float>()[first * 6 + i], alone.data<float>()[i], 1e-6) << i;
  }
}

TEST(Hstu, ABatchWithoutTokensRunsForwardAndBackward) {
  TinyModel s(TinyConfig());
  HstuBatch batch;
  AppendTrainingUser(std::vector<int64_t>{4}, std::vector<int64_t>{1}, 4, 0, batch);
  Arena arena;
  const DropoutDraw dropout{0.3f, 5, 2};
  int announced = 0;
  s.model->set_on_gradients_ready([&](int first, int end) { announced += end - first; });
  Tensor out = *s.model->Forward(arena, batch, nullptr, &dropout);
  EXPECT_EQ(out.dim(0), 0);
  s.store.ZeroGrads();
  ASSERT_TRUE(s.model->Backward(out, nullptr).ok());
  EXPECT_EQ(announced, s.store.size());  // data parallelism still hears of every gradient
  const float* g = s.store.grads().data<float>();
  EXPECT_TRUE(std::all_of(g, g + s.store.numel(), [](float x) { return x == 0; }));
}

}  // namespace
}  // namespace tessera::hstu
