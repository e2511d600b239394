#include "runtime/kernels/cuda/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "runtime/kernels/cpu/gemm.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using testing::DeviceVector;
using testing::NormalizedMaxError;
using testing::RandomVector;

// Strict fp32 on both sides; only the summation order differs.
constexpr double kTolerance = 1e-5;

class CudaGemmTest : public testing::CudaTest {
 protected:
  void SetUp() override {
    testing::CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto context = GemmContext::Create();
    ASSERT_TRUE(context.ok()) << context.status();
    context_ = std::move(context).value();
  }

  std::unique_ptr<GemmContext> context_;
};

struct GemmCase {
  bool trans_a, trans_b;
  int64_t batch, m, n, k;
  int64_t pad;  // extra columns in every leading dimension
  float alpha, beta;
};

// Runs one (batched) GEMM on the GPU and the CPU with the same inputs.
void ExpectMatchesCpu(GemmContext& context, cudaStream_t stream, const GemmCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "trans_a=" << c.trans_a << " trans_b=" << c.trans_b
                                    << " batch=" << c.batch << " m=" << c.m << " n=" << c.n
                                    << " k=" << c.k << " pad=" << c.pad << " beta=" << c.beta);
  // Stored shapes: A [m, k] or [k, m]; B [k, n] or [n, k]; C [m, n].
  const int64_t a_rows = c.trans_a ? c.k : c.m, a_cols = c.trans_a ? c.m : c.k;
  const int64_t b_rows = c.trans_b ? c.n : c.k, b_cols = c.trans_b ? c.k : c.n;
  const int64_t lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.n + c.pad;
  const int64_t stride_a = a_rows * lda, stride_b = b_rows * ldb, stride_c = c.m * ldc;
  const std::vector<float> a = RandomVector(c.batch * stride_a, seed);
  const std::vector<float> b = RandomVector(c.batch * stride_b, seed + 1);
  std::vector<float> c_cpu = RandomVector(c.batch * stride_c, seed + 2);

  DeviceVector a_dev(a), b_dev(b), c_dev(c_cpu);
  const absl::Status status = GemmBatched(context, c.trans_a, c.trans_b, c.batch, c.m, c.n, c.k,
                                          c.alpha, a_dev.data(), lda, stride_a, b_dev.data(), ldb,
                                          stride_b, c.beta, c_dev.data(), ldc, stride_c, stream);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cpu::GemmBatched(c.trans_a, c.trans_b, c.batch, c.m, c.n, c.k, c.alpha, a.data(), lda, stride_a,
                   b.data(), ldb, stride_b, c.beta, c_cpu.data(), ldc, stride_c);
  // Padding columns of C must be untouched on both sides, so compare all.
  EXPECT_LT(NormalizedMaxError(c_dev.ToHost(), c_cpu), kTolerance);
}

TEST_F(CudaGemmTest, MatchesCpuForAllTransposesOddSizesAndPaddedLeadingDims) {
  uint64_t seed = 10;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      for (int64_t pad : {0, 3}) {
        ExpectMatchesCpu(*context_, stream_, {trans_a, trans_b, 1, 37, 23, 19, pad, 1.0f, 0.0f},
                         seed += 3);
        ExpectMatchesCpu(*context_, stream_, {trans_a, trans_b, 1, 1, 129, 64, pad, 0.5f, 1.5f},
                         seed += 3);
        ExpectMatchesCpu(*context_, stream_, {trans_a, trans_b, 1, 130, 1, 257, pad, 2.0f, -1.0f},
                         seed += 3);
      }
    }
  }
}

TEST_F(CudaGemmTest, BatchedMatchesCpu) {
  ExpectMatchesCpu(*context_, stream_, {false, true, 5, 17, 31, 9, 0, 1.0f, 0.0f}, 100);
  ExpectMatchesCpu(*context_, stream_, {true, false, 3, 64, 48, 33, 1, 0.25f, 1.0f}, 200);
}

TEST_F(CudaGemmTest, ZeroKScalesCAndZeroBetaOverwritesNaN) {
  ExpectMatchesCpu(*context_, stream_, {false, false, 2, 7, 5, 0, 0, 1.0f, 3.0f}, 300);

  // beta == 0: C is not read, so NaN garbage in it must not survive (k == 0
  // and k > 0 both).
  for (int64_t k : {0, 4}) {
    const int64_t m = 3, n = 6;
    std::vector<float> nan_c(m * n, std::numeric_limits<float>::quiet_NaN());
    DeviceVector a(RandomVector(m * k, 301)), b(RandomVector(k * n, 302)), c(nan_c);
    ASSERT_TRUE(Gemm(*context_, false, false, m, n, k, 1.0f, a.data(), std::max<int64_t>(k, 1),
                     b.data(), n, 0.0f, c.data(), n, stream_)
                    .ok());
    Sync();
    for (float v : c.ToHost()) EXPECT_FALSE(std::isnan(v)) << "k=" << k;
  }
}

TEST_F(CudaGemmTest, EmptyOutputIsANoOp) {
  DeviceVector c(std::vector<float>{1.0f, 2.0f});
  EXPECT_TRUE(Gemm(*context_, false, false, 0, 2, 3, 1.0f, nullptr, 3, nullptr, 2, 0.0f, c.data(),
                   2, stream_)
                  .ok());
  EXPECT_TRUE(GemmBatched(*context_, false, false, 0, 1, 2, 3, 1.0f, nullptr, 3, 0, nullptr, 2, 0,
                          0.0f, c.data(), 2, 0, stream_)
                  .ok());
  Sync();
  EXPECT_EQ(c.ToHost(), (std::vector<float>{1.0f, 2.0f}));
}

TEST_F(CudaGemmTest, MisalignedViewsMatchCpu) {
  // Matrices starting one float into their buffers: cuBLASLt must be told the
  // real (4-byte) alignment or it may pick a kernel that faults.
  const int64_t m = 33, n = 17, k = 45;
  const std::vector<float> a = RandomVector(m * k + 1, 400);
  const std::vector<float> b = RandomVector(k * n + 1, 401);
  std::vector<float> c_cpu(m * n + 1, 0.0f);
  DeviceVector a_dev(a), b_dev(b), c_dev(c_cpu);
  ASSERT_TRUE(Gemm(*context_, false, false, m, n, k, 1.0f, a_dev.data() + 1, k, b_dev.data() + 1, n,
                   0.0f, c_dev.data() + 1, n, stream_)
                  .ok());
  Sync();
  cpu::Gemm(false, false, m, n, k, 1.0f, a.data() + 1, k, b.data() + 1, n, 0.0f, c_cpu.data() + 1,
            n);
  EXPECT_LT(NormalizedMaxError(c_dev.ToHost(), c_cpu), kTolerance);
}

TEST_F(CudaGemmTest, RejectsTooSmallLeadingDimensionAndNegativeSizes) {
  DeviceVector a(12), b(12), c(16);
  // A is [4, 3], so lda must be >= 3.
  EXPECT_EQ(Gemm(*context_, false, false, 4, 4, 3, 1.0f, a.data(), 2, b.data(), 4, 0.0f, c.data(),
                 4, stream_)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Gemm(*context_, false, false, -1, 4, 3, 1.0f, a.data(), 3, b.data(), 4, 0.0f, c.data(),
                 4, stream_)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera::cuda
