// Scoring and ranking for evaluation and recommendation: scores are the
// cosine between a user's last output and every item row (a double
// reference on the model's own outputs), and the top items skip the history.
#include "models/hstu/scoring.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::hstu {
namespace {

TEST(Scoring, ScoresAreCosinesOfTheLastOutputWithEveryItemRow) {
  HstuConfig config;
  config.set_num_items(11);
  config.set_embedding_dim(4);
  config.set_num_blocks(1);
  config.set_num_heads(1);
  config.set_attention_dim(2);
  config.set_linear_dim(2);
  config.set_max_len(3);
  config.set_num_time_buckets(8);
  ParameterStore store;
  auto model = *Hstu::Create(config, store);
  store.Finalize(1);
  const auto values = cpu::test::RandomFloats(store.numel(), 2);
  std::copy(values.begin(), values.end(), store.values().data<float>());
  const std::vector<float> items = cpu::test::RandomFloats(11 * 4, 3);  // the item table
  const float* table = items.data();

  // The second history is longer than max_len: only its last 3 events count.
  const std::vector<int64_t> items_a = {3, 5}, times_a = {10, 20};
  const std::vector<int64_t> items_b = {1, 2, 3, 4, 9}, times_b = {1, 2, 3, 4, 5};
  const std::vector<UserHistory> users = {{items_a, times_a, 30}, {items_b, times_b, 6}};
  Arena arena;
  const std::vector<float> scores = *ScoreItems(*model, arena, table, users);
  ASSERT_EQ(scores.size(), 22u);

  // The reference: the model's outputs for the same histories, cut by hand.
  HstuBatch batch;
  AppendHistoryUser(items_a, times_a, 30, 3, 0, batch);
  AppendHistoryUser(std::vector<int64_t>{3, 4, 9}, std::vector<int64_t>{3, 4, 5}, 6, 3, 1, batch);
  Arena arena2;
  std::vector<float> inputs(batch.items.size() * 4);
  for (size_t i = 0; i < batch.items.size(); ++i) {
    std::copy_n(table + batch.items[i] * 4, 4, inputs.data() + i * 4);
  }
  const Tensor out = *model->Forward(arena2, batch, inputs.data(), nullptr, false);
  for (int u = 0; u < 2; ++u) {
    const float* q = out.data<float>() + (batch.offsets[u + 1] - 1) * 4;
    for (int i = 0; i < 11; ++i) {
      double dot = 0, qq = 0, ee = 0;
      for (int d = 0; d < 4; ++d) {
        dot += double(q[d]) * table[i * 4 + d];
        qq += double(q[d]) * q[d];
        ee += double(table[i * 4 + d]) * table[i * 4 + d];
      }
      EXPECT_NEAR(scores[u * 11 + i], dot / std::sqrt(qq * ee), 1e-5) << u << " " << i;
    }
  }
}

TEST(Scoring, TopItemsAreBestFirstWithoutTheHistoryTiesBySmallerId) {
  const std::vector<float> s = {0.3, 0.9, 0.5, 0.9, 0.1, 0.7};
  EXPECT_EQ(TopItems(s, std::vector<int64_t>{}, 3), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(TopItems(s, std::vector<int64_t>{1, 5, 5}, 3), (std::vector<int64_t>{3, 2, 0}));
  EXPECT_EQ(TopItems(s, std::vector<int64_t>{0, 1, 2, 3}, 5), (std::vector<int64_t>{5, 4}));
}

}  // namespace
}  // namespace tessera::hstu
