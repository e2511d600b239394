// Ulysses attention over the world as the sp group (CTest: 1, 2 and 4 ranks)
// against the single-process oracle: every rank computes single-rank
// attention (the CPU kernel, or MultiHeadAttention) on the full sequence and
// compares its own token shard of outputs and input gradients; parameter
// gradients, partial sums per rank, are all-reduced first.
#include "parallel/sequence_parallel/ulysses_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "parallel/comm/mpi_communicator.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/attention.h"
#include "runtime/nn/attention.h"
#include "tests/parallel/comm/mpi_test_main.h"
#include "tests/testing/gradient_check.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

// Heads 8 so that at sp = 4 each rank still holds two; head_dim 3 and a local
// sequence of 3 tokens at sp = 4 keep the sizes odd; batch 2 exercises the
// sample-major reordering around the all-to-alls.
constexpr int64_t kBatch = 2, kSeq = 12, kHeads = 8, kHeadDim = 3;
constexpr int64_t kWidth = kHeads * kHeadDim;  // of one token's q, k or v
constexpr float kSentinel = 7.0f;

std::unique_ptr<MpiCommunicator> World() {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(60));
  TESSERA_CHECK(world.ok());
  return std::move(*world);
}

std::vector<float> Random(int64_t n, uint64_t seed) {
  std::vector<float> x(static_cast<size_t>(n));
  tessera::testing::FillNormal(x.data(), n, seed);
  return x;
}

// Row (sample b, local position s) of this rank's shard in a [batch * seq]
// sample-major row range.
int64_t GlobalRow(int64_t b, int64_t s, int64_t seq, int rank, int sp) {
  return b * seq + rank * (seq / sp) + s;
}

// The core runs the same kernel on the same heads, so only its blocking can
// differ; the layer's GEMMs see other row counts and sum in another order.
constexpr float kCoreTolerance = 2e-5f, kLayerTolerance = 1e-4f;

void ExpectNear(float got, float want, const char* what, int64_t i,
                float tolerance = kCoreTolerance) {
  EXPECT_NEAR(got, want, tolerance * std::max(1.0f, std::abs(want))) << what << " element " << i;
}

// Where q, k and v (and dq, dk, dv) live on a rank.
enum class Layout {
  kFused,          // one [B, S/sp, 3, H, Dh] buffer, as a qkv projection makes
  kPaddedSeparate  // three arrays whose rows have 5 floats of padding
};

struct LocalQkv {
  int64_t stride;
  std::vector<float> buffers[3];
  float* part[3];
};

LocalQkv MakeLocal(Layout layout, int64_t rows, float fill) {
  LocalQkv local;
  if (layout == Layout::kFused) {
    local.stride = 3 * kWidth;
    local.buffers[0].assign(static_cast<size_t>(rows * local.stride), fill);
    for (int p = 0; p < 3; ++p) local.part[p] = local.buffers[0].data() + p * kWidth;
  } else {
    local.stride = kWidth + 5;
    for (int p = 0; p < 3; ++p) {
      local.buffers[p].assign(static_cast<size_t>(rows * local.stride), fill);
      local.part[p] = local.buffers[p].data();
    }
  }
  return local;
}

void CheckCoreAgainstSingleRank(bool causal, Layout layout) {
  auto world = World();
  const int rank = world->rank(), sp = world->size();
  const int64_t local_seq = kSeq / sp, local_rows = kBatch * local_seq;

  // The full problem, identical on every rank: q, k, v, dout [B, S, H, Dh].
  const int64_t n = kBatch * kSeq * kWidth;
  const std::vector<float> full[3] = {Random(n, 1), Random(n, 2), Random(n, 3)};
  const std::vector<float> full_dout = Random(n, 4);
  std::vector<float> want_out(n), want_lse(kBatch * kHeads * kSeq), want_grad[3];
  for (auto& g : want_grad) g.resize(n);
  const AttentionShape shape{kBatch, kSeq, kHeads, kHeadDim, kWidth, causal};
  cpu::AttentionForward(shape, full[0].data(), full[1].data(), full[2].data(), want_out.data(),
                        want_lse.data());
  cpu::AttentionBackward(shape, full[0].data(), full[1].data(), full[2].data(), want_out.data(),
                         full_dout.data(), want_lse.data(), want_grad[0].data(),
                         want_grad[1].data(), want_grad[2].data());

  // This rank's token shard.
  LocalQkv qkv = MakeLocal(layout, local_rows, 0.0f);
  std::vector<float> dout(local_rows * kWidth);
  for (int64_t b = 0; b < kBatch; ++b) {
    for (int64_t s = 0; s < local_seq; ++s) {
      const int64_t row = GlobalRow(b, s, kSeq, rank, sp), t = b * local_seq + s;
      for (int p = 0; p < 3; ++p) {
        std::memcpy(qkv.part[p] + t * qkv.stride, full[p].data() + row * kWidth,
                    kWidth * sizeof(float));
      }
      std::memcpy(dout.data() + t * kWidth, full_dout.data() + row * kWidth,
                  kWidth * sizeof(float));
    }
  }

  auto core = UlyssesAttention::Create(*world, kHeads, kHeadDim, causal);
  ASSERT_TRUE(core.ok()) << core.status();
  EXPECT_EQ(core->local_heads(), kHeads / sp);
  Arena arena;
  auto out = core->Forward(arena, kBatch, kSeq, qkv.stride, qkv.part[0], qkv.part[1], qkv.part[2]);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->shape(), (Shape{local_rows, kWidth}));

  Tensor dout_tensor = arena.AllocateUninitialized(DType::kF32, Shape{local_rows, kWidth});
  std::memcpy(dout_tensor.data<float>(), dout.data(), dout.size() * sizeof(float));
  LocalQkv grad = MakeLocal(layout, local_rows, kSentinel);
  ASSERT_TRUE(core->Backward(arena, dout_tensor, grad.part[0], grad.part[1], grad.part[2]).ok());

  const char* names[3] = {"dq", "dk", "dv"};
  for (int64_t b = 0; b < kBatch; ++b) {
    for (int64_t s = 0; s < local_seq; ++s) {
      const int64_t row = GlobalRow(b, s, kSeq, rank, sp), t = b * local_seq + s;
      for (int64_t c = 0; c < kWidth; ++c) {
        ExpectNear(out->data<float>()[t * kWidth + c], want_out[row * kWidth + c], "out",
                   row * kWidth + c);
        for (int p = 0; p < 3; ++p) {
          ExpectNear(grad.part[p][t * grad.stride + c], want_grad[p][row * kWidth + c], names[p],
                     row * kWidth + c);
        }
      }
      if (layout == Layout::kPaddedSeparate) {
        for (int p = 0; p < 3; ++p) {
          for (int64_t c = kWidth; c < grad.stride; ++c) {
            EXPECT_EQ(grad.part[p][t * grad.stride + c], kSentinel) << names[p] << " padding";
          }
        }
      }
    }
  }
}

TEST(UlyssesAttention, FusedQkvMatchesSingleRankKernel) {
  CheckCoreAgainstSingleRank(/*causal=*/false, Layout::kFused);
}
TEST(UlyssesAttention, CausalFusedQkvMatchesSingleRankKernel) {
  CheckCoreAgainstSingleRank(/*causal=*/true, Layout::kFused);
}
TEST(UlyssesAttention, SeparatePaddedQkvMatchesSingleRankKernelAndKeepsPadding) {
  CheckCoreAgainstSingleRank(/*causal=*/false, Layout::kPaddedSeparate);
}
TEST(UlyssesAttention, CausalSeparatePaddedQkvMatchesSingleRankKernelAndKeepsPadding) {
  CheckCoreAgainstSingleRank(/*causal=*/true, Layout::kPaddedSeparate);
}

TEST(UlyssesAttention, EmptyBatchGivesEmptyOutputAndGradients) {
  auto world = World();
  auto core = UlyssesAttention::Create(*world, kHeads, kHeadDim);
  ASSERT_TRUE(core.ok()) << core.status();
  Arena arena;
  float unused = 0;
  auto out = core->Forward(arena, /*batch=*/0, kSeq, kWidth, &unused, &unused, &unused);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->shape(), (Shape{0, kWidth}));
  Tensor dout = arena.Allocate(DType::kF32, Shape{0, kWidth});
  EXPECT_TRUE(core->Backward(arena, dout, &unused, &unused, &unused).ok());
}

void ExpectUsageError(const absl::Status& status, const std::vector<std::string>& parts) {
  EXPECT_EQ(ExitCodeFor(status), 2) << status;
  for (const std::string& part : parts) {
    EXPECT_NE(status.message().find(part), absl::string_view::npos)
        << "'" << part << "' missing from: " << status.message();
  }
}

TEST(UlyssesLayout, IndivisibleHeadsOrSequenceAreUsageErrorsNamingParallelSp) {
  EXPECT_TRUE(ValidateUlyssesLayout(8, 12, 4).ok());
  EXPECT_TRUE(ValidateUlyssesLayout(3, 7, 1).ok());
  ExpectUsageError(ValidateUlyssesLayout(6, 12, 4), {"heads = 6", "parallel.sp = 4"});
  ExpectUsageError(ValidateUlyssesLayout(8, 10, 4), {"sequence length = 10", "parallel.sp = 4"});
}

TEST(UlyssesLayout, IndivisibleSizesFailOnEveryRankBeforeAnyExchange) {
  auto world = World();
  const int sp = world->size();
  if (sp == 1) GTEST_SKIP() << "every size divides into one rank";
  // Heads: the core is not made.
  ExpectUsageError(UlyssesAttention::Create(*world, sp + 1, kHeadDim).status(),
                   {"parallel.sp", "heads"});

  // Sequence: Forward refuses on every rank alike, before any collective.
  auto core = UlyssesAttention::Create(*world, kHeads, kHeadDim);
  ASSERT_TRUE(core.ok());
  Arena arena;
  float unused = 0;
  ExpectUsageError(core->Forward(arena, 1, 2 * sp + 1, kWidth, &unused, &unused, &unused).status(),
                   {"parallel.sp", "sequence length"});
}

}  // namespace
}  // namespace tessera::parallel

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
