// The tensor-core attention (runtime/kernels/cuda/attention_bf16.h): its
// launch plan on the host (no GPU needed), and on a GPU its forward and
// backward against the CPU's fp32 attention on bf16-ROUNDED inputs.
//
// Tolerance. With Q, K, V, dO already bf16 values, the kernel rounds nothing
// else on the way in, and its products of bf16 values are exact in fp32.
// What differs from the fp32 CPU kernel is (a) the probabilities P rounded
// to bf16 before P V and P^T dO, (b) dS rounded to bf16 before dS K and
// dS^T Q, (c) fp32 summation order and exp2 against exp. Rounding to nearest
// changes each factor by at most 2^-9 of itself, so an output element
// sum_j x_j y_j with x rounded moves by at most 2^-9 sum_j |x_j y_j|:
//   out[i]  : 2^-9 sum_j P_ij |V_j|          dV[j] : 2^-9 sum_i P_ij |dO_i|
//   dK[j]   : 2^-9 scale sum_i |dS_ij| |Q_i| dQ[i] : 2^-9 scale sum_j |dS_ij| |K_j|
// The test computes those sums in double for every element and allows twice
// the bound (2^-8 of it) plus 1e-5 of the largest value for (c). A wrong
// key, column, mask or tile boundary moves an element by about the whole
// sum, 256 times the tolerance. Each pass runs on identical inputs (the
// backward gets the CPU's out and lse), so the bounds do not compound.
#include "runtime/kernels/cuda/attention_bf16.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/gemm_bf16.h"
#include "tests/runtime/kernels/cuda/attention_bf16_test_util.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using testing::Case;
using testing::DeviceVector;
using testing::RandomVector;

// ---- The plan (host only) -----------------------------------------------------

AttentionShape Shape(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                     bool causal = false) {
  return AttentionShape{batch, seq, heads, head_dim, 3 * heads * head_dim, causal};
}

TEST(CudaAttentionBf16Plan, TakesHeadDimsUpTo128InStepsOf4OnThe64_96_128Kernels) {
  for (int64_t dh = 0; dh <= 160; ++dh) {
    SCOPED_TRACE(::testing::Message() << "head_dim=" << dh);
    const std::optional<Bf16AttentionPlan> plan = PlanBf16Attention(Shape(2, 100, 3, dh));
    const bool expected = dh >= 16 && dh <= 128 && dh % 4 == 0;
    ASSERT_EQ(plan.has_value(), expected);
    if (!plan) continue;
    // The smallest kernel that holds the head: 64, 96 or 128 columns.
    EXPECT_GE(plan->padded_head_dim, dh);
    for (int smaller : {64, 96, 128}) {
      if (smaller < plan->padded_head_dim) {
        EXPECT_LT(smaller, dh) << smaller;
      }
    }
    EXPECT_TRUE(plan->padded_head_dim == 64 || plan->padded_head_dim == 96 ||
                plan->padded_head_dim == 128);
  }
}

TEST(CudaAttentionBf16Plan, GridsCoverTheSequenceAndSharedMemoryFitsTwoBlocksPerSm) {
  for (int64_t dh : {16, 32, 64, 72, 96, 128}) {
    for (int64_t seq : {1, 15, 16, 63, 64, 65, 200, 1000, 4096}) {
      SCOPED_TRACE(::testing::Message() << "head_dim=" << dh << " seq=" << seq);
      const AttentionShape shape = Shape(3, seq, 5, dh, seq % 2 == 1);
      const std::optional<Bf16AttentionPlan> plan = PlanBf16Attention(shape);
      ASSERT_TRUE(plan.has_value());
      const Bf16AttentionPlan& p = *plan;
      EXPECT_EQ(p.grid_x, 15);
      EXPECT_EQ(p.threads % 32, 0);
      // A warp owns 16 rows of the block's own tile.
      for (int rows : {p.forward_queries, p.kv_keys, p.q_queries}) EXPECT_EQ(rows, p.threads / 2);
      // Inner tiles are whole mma steps (16 along k, 8 along n).
      for (int tile : {p.forward_keys, p.kv_queries, p.q_keys}) EXPECT_EQ(tile % 16, 0) << tile;
      struct Grid {
        int64_t blocks;
        int rows;
      };
      for (const Grid& g : {Grid{p.forward_grid_y, p.forward_queries}, Grid{p.kv_grid_y, p.kv_keys},
                            Grid{p.q_grid_y, p.q_queries}}) {
        EXPECT_GE(g.blocks * g.rows, seq);
        EXPECT_LT((g.blocks - 1) * g.rows, seq);
      }
      // Shared memory holds at least the bf16 tiles each kernel stages, and
      // two blocks of each fit in an H100/H200 SM (228 KiB).
      const size_t row_bytes = 2 * p.padded_head_dim;
      EXPECT_GE(p.forward_smem, row_bytes * (p.forward_queries + 2 * p.forward_keys));
      EXPECT_GE(p.kv_smem, row_bytes * (2 * p.kv_keys + 4 * p.kv_queries));
      EXPECT_GE(p.q_smem, row_bytes * (2 * p.q_queries + 3 * p.q_keys));
      for (size_t smem : {p.forward_smem, p.kv_smem, p.q_smem}) {
        EXPECT_LE(smem, kBf16AttentionMaxSmem);
        EXPECT_LE(2 * smem, size_t{228} * 1024);
      }
    }
  }
}

TEST(CudaAttentionBf16Plan, RefusesStridesPointersAndSizesTheKernelsCannotTake) {
  alignas(16) static float buffer[64];
  const float* aligned = buffer;
  const float* odd = buffer + 1;  // 4-byte aligned only
  const AttentionShape ok = Shape(2, 50, 2, 64);
  EXPECT_TRUE(Bf16AttentionSupports(ok, {aligned, aligned + 4, aligned + 8}));
  EXPECT_FALSE(Bf16AttentionSupports(ok, {aligned, odd, aligned}));

  AttentionShape odd_stride = ok;
  odd_stride.row_stride = 3 * 2 * 64 + 2;  // rows would not stay 16-byte aligned
  EXPECT_FALSE(Bf16AttentionSupports(odd_stride, {aligned}));
  AttentionShape padded = ok;
  padded.row_stride = 3 * 2 * 64 + 4;
  EXPECT_TRUE(Bf16AttentionSupports(padded, {aligned}));
  AttentionShape narrow = ok;
  narrow.row_stride = 2 * 64 - 4;  // rows overlap
  EXPECT_FALSE(Bf16AttentionSupports(narrow, {aligned}));

  EXPECT_FALSE(PlanBf16Attention(Shape(0, 50, 2, 64)).has_value());
  EXPECT_FALSE(PlanBf16Attention(Shape(2, 0, 2, 64)).has_value());
  // 65535 blocks of 64 rows is the longest sequence a grid's y holds.
  EXPECT_TRUE(PlanBf16Attention(Shape(1, int64_t{65535} * 64, 1, 64)).has_value());
  EXPECT_FALSE(PlanBf16Attention(Shape(1, int64_t{65535} * 64 + 1, 1, 64)).has_value());
}

// Argument errors come back before any CUDA call, so these run without a GPU.
TEST(CudaAttentionBf16Plan, EntryPointsRejectUnsupportedCallsAndAcceptEmptyOnes) {
  alignas(16) static float buffer[64];
  const AttentionShape dh8 = Shape(1, 4, 1, 8);
  const absl::Status forward =
      AttentionForwardBf16(dh8, buffer, buffer, buffer, buffer, buffer, nullptr);
  EXPECT_EQ(forward.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(forward.message().find("head_dim=8"), std::string::npos) << forward;
  EXPECT_EQ(AttentionBackwardBf16(dh8, buffer, buffer, buffer, buffer, buffer, buffer, buffer,
                                  buffer, buffer, buffer, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      AttentionForwardBf16(Shape(0, 4, 1, 64), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr)
          .ok());
  EXPECT_TRUE(AttentionBackwardBf16(Shape(2, 0, 1, 64), nullptr, nullptr, nullptr, nullptr,
                                    nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr)
                  .ok());
}

// ---- Against the CPU (GPU) --------------------------------------------------------

using CudaAttentionBf16Test = testing::CudaTest;

// The kernels on the device, each call checked and waited for.
struct GpuRun {
  cudaStream_t stream;
  void Forward(const AttentionShape& shape, const float* q, const float* k, const float* v,
               float* out, float* lse) {
    ASSERT_TRUE(AttentionForwardBf16(shape, q, k, v, out, lse, stream).ok());
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  }
  void Backward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                const float* out, const float* dout, const float* lse, float* dq, float* dk,
                float* dv, float* scratch) {
    ASSERT_TRUE(
        AttentionBackwardBf16(shape, q, k, v, out, dout, lse, dq, dk, dv, scratch, stream).ok());
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  }
};

TEST_F(CudaAttentionBf16Test, ForwardAndBackwardMatchCpuOnBf16RoundedInputs) {
  uint64_t seed = 100;
  GpuRun run{stream_};
  for (const Case& c : testing::Bf16AttentionCases()) {
    testing::CheckAgainstCpu<DeviceVector>(c, seed, run);
    if (HasFatalFailure()) return;
  }
}

TEST_F(CudaAttentionBf16Test, RepeatedRunsGiveTheSameBits) {
  const AttentionShape shape{2, 150, 3, 64, 3 * 3 * 64, true};
  const int64_t rows = shape.batch * shape.seq, width = shape.heads * shape.head_dim;
  DeviceVector qkv(RandomVector(rows * shape.row_stride, 7)), dout(RandomVector(rows * width, 8));
  DeviceVector out(rows * width), lse(shape.batch * shape.heads * shape.seq);
  DeviceVector scratch(AttentionBackwardBf16Scratch(shape));
  std::vector<float> first[3];
  for (int run = 0; run < 2; ++run) {
    DeviceVector dqkv(RandomVector(rows * shape.row_stride, 9 + run));  // overwritten
    ASSERT_TRUE(AttentionForwardBf16(shape, qkv.data(), qkv.data() + width,
                                     qkv.data() + 2 * width, out.data(), lse.data(), stream_)
                    .ok());
    ASSERT_TRUE(AttentionBackwardBf16(shape, qkv.data(), qkv.data() + width,
                                      qkv.data() + 2 * width, out.data(), dout.data(), lse.data(),
                                      dqkv.data(), dqkv.data() + width, dqkv.data() + 2 * width,
                                      scratch.data(), stream_)
                    .ok());
    Sync();
    // The fused buffer has no padding, so all of it is overwritten.
    const std::vector<float> now[3] = {out.ToHost(), lse.ToHost(), dqkv.ToHost()};
    if (run == 0) {
      for (int i = 0; i < 3; ++i) first[i] = now[i];
      continue;
    }
    EXPECT_EQ(now[0], first[0]) << "out";
    EXPECT_EQ(now[1], first[1]) << "lse";
    EXPECT_EQ(now[2], first[2]) << "dq, dk, dv";
  }
}

}  // namespace
}  // namespace tessera::cuda
