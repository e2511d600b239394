#include "runtime/kernels/cpu/embedding.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::cpu {
namespace {

using test::RandomFloats;

std::vector<int32_t> RandomIds(int64_t n, int32_t rows, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.NextU64() % rows);
  return ids;
}

TEST(Embedding, ForwardCopiesTheRowOfEachId) {
  const int32_t rows = 11;
  for (int64_t n : {0, 1, 7, 300}) {
    for (int64_t dim : {1, 7, 130}) {
      const auto table = RandomFloats(rows * dim, 1 + n + dim);
      const auto ids = RandomIds(n, rows, 2 + n);
      std::vector<float> out(n * dim, -1.0f);
      EmbeddingForward(ids.data(), table.data(), out.data(), n, dim);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < dim; ++j) {
          ASSERT_EQ(out[i * dim + j], table[ids[i] * dim + j]) << "i=" << i << " j=" << j;
        }
      }
    }
  }
}

// Repeated ids must add up, not overwrite; existing gradient is kept. The
// reference is the plain serial loop in float — the kernel promises the same
// order per element, so equality is exact.
TEST(Embedding, BackwardAccumulatesRepeatedIdsInIdOrder) {
  const int32_t rows = 5;
  for (int64_t n : {0, 1, 7, 40}) {
    for (int64_t dim : {1, 9, 130}) {
      const auto dout = RandomFloats(n * dim, 10 + n + dim);
      const auto ids = RandomIds(n, rows, 11 + n);
      auto dtable = RandomFloats(rows * dim, 12);
      auto want = dtable;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < dim; ++j) want[ids[i] * dim + j] += dout[i * dim + j];
      }
      EmbeddingBackward(ids.data(), dout.data(), dtable.data(), n, dim);
      EXPECT_EQ(dtable, want) << "n=" << n << " dim=" << dim;
    }
  }
}

TEST(Embedding, BackwardIsBitwiseIndependentOfThreadCount) {
  const int32_t rows = 50;
  const int64_t n = 400, dim = 200;
  const auto dout = RandomFloats(n * dim, 20);
  const auto ids = RandomIds(n, rows, 21);
  auto run = [&](int threads) {
    test::ScopedNumThreads scoped(threads);
    std::vector<float> dtable(rows * dim, 0.25f);
    EmbeddingBackward(ids.data(), dout.data(), dtable.data(), n, dim);
    return dtable;
  };
  const auto serial = run(1);
  EXPECT_TRUE(test::BitwiseEqual(serial, run(2)));
  EXPECT_TRUE(test::BitwiseEqual(serial, run(3)));
}

}  // namespace
}  // namespace tessera::cpu
