#include "runtime/kernels/cuda/layer_norm.h"

#include <gtest/gtest.h>

#include <vector>

#include "runtime/kernels/cpu/layer_norm.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using testing::DeviceVector;
using testing::NormalizedMaxError;
using testing::RandomVector;

// The CPU accumulates in double, the GPU in fp32 over at most a few thousand
// terms.
constexpr double kTolerance = 2e-5;
constexpr float kEps = 1e-5f;

using CudaLayerNormTest = testing::CudaTest;

struct Shape {
  int64_t rows, dim;
};
// Odd sizes, one-column rows, rows not a multiple of the rows per block, and
// tall inputs that give every column-reduction thread many rows.
constexpr Shape kShapes[] = {{1, 1}, {7, 33}, {65, 300}, {1000, 64}, {3, 2049}};

TEST_F(CudaLayerNormTest, ForwardAndBackwardMatchCpuWithAndWithoutAffine) {
  uint64_t seed = 1;
  for (const Shape& s : kShapes) {
    for (bool affine : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "rows=" << s.rows << " dim=" << s.dim << " affine=" << affine);
      // x has a large offset so a one-pass variance would lose digits.
      std::vector<float> x = RandomVector(s.rows * s.dim, seed++, 2.0f);
      for (float& v : x) v += 10.0f;
      const std::vector<float> gamma = RandomVector(s.dim, seed++);
      const std::vector<float> beta = RandomVector(s.dim, seed++);
      const std::vector<float> dy = RandomVector(s.rows * s.dim, seed++);
      // Parameter gradients accumulate into what is already there.
      std::vector<float> dgamma_cpu = RandomVector(s.dim, seed++);
      std::vector<float> dbeta_cpu = RandomVector(s.dim, seed++);

      DeviceVector x_dev(x), gamma_dev(gamma), beta_dev(beta), dy_dev(dy);
      DeviceVector y_dev(s.rows * s.dim), mean_dev(s.rows), rstd_dev(s.rows);
      DeviceVector dx_dev(RandomVector(s.rows * s.dim, seed++));  // overwritten
      DeviceVector dgamma_dev(dgamma_cpu), dbeta_dev(dbeta_cpu);
      const float* g = affine ? gamma_dev.data() : nullptr;
      const float* b = affine ? beta_dev.data() : nullptr;
      ASSERT_TRUE(LayerNormForward(x_dev.data(), g, b, y_dev.data(), mean_dev.data(),
                                   rstd_dev.data(), s.rows, s.dim, kEps, stream_)
                      .ok());
      ASSERT_TRUE(LayerNormBackward(dy_dev.data(), x_dev.data(), g, mean_dev.data(),
                                    rstd_dev.data(), dx_dev.data(),
                                    affine ? dgamma_dev.data() : nullptr,
                                    affine ? dbeta_dev.data() : nullptr, s.rows, s.dim, stream_)
                      .ok());
      Sync();

      std::vector<float> y(s.rows * s.dim), mean(s.rows), rstd(s.rows), dx(s.rows * s.dim);
      cpu::LayerNormForward(x.data(), affine ? gamma.data() : nullptr,
                            affine ? beta.data() : nullptr, y.data(), mean.data(), rstd.data(),
                            s.rows, s.dim, kEps);
      cpu::LayerNormBackward(dy.data(), x.data(), affine ? gamma.data() : nullptr, mean.data(),
                             rstd.data(), dx.data(), affine ? dgamma_cpu.data() : nullptr,
                             affine ? dbeta_cpu.data() : nullptr, s.rows, s.dim);
      EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance);
      EXPECT_LT(NormalizedMaxError(mean_dev.ToHost(), mean), kTolerance);
      EXPECT_LT(NormalizedMaxError(rstd_dev.ToHost(), rstd), kTolerance);
      EXPECT_LT(NormalizedMaxError(dx_dev.ToHost(), dx), kTolerance);
      EXPECT_LT(NormalizedMaxError(dgamma_dev.ToHost(), dgamma_cpu), kTolerance);
      EXPECT_LT(NormalizedMaxError(dbeta_dev.ToHost(), dbeta_cpu), kTolerance);
    }
  }
}

TEST_F(CudaLayerNormTest, RmsNormForwardAndBackwardMatchCpu) {
  uint64_t seed = 100;
  for (const Shape& s : kShapes) {
    for (bool affine : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "rows=" << s.rows << " dim=" << s.dim << " affine=" << affine);
      const std::vector<float> x = RandomVector(s.rows * s.dim, seed++, 3.0f);
      const std::vector<float> gamma = RandomVector(s.dim, seed++);
      const std::vector<float> dy = RandomVector(s.rows * s.dim, seed++);
      std::vector<float> dgamma_cpu = RandomVector(s.dim, seed++);

      DeviceVector x_dev(x), gamma_dev(gamma), dy_dev(dy), dgamma_dev(dgamma_cpu);
      DeviceVector y_dev(s.rows * s.dim), rstd_dev(s.rows), dx_dev(s.rows * s.dim);
      const float* g = affine ? gamma_dev.data() : nullptr;
      ASSERT_TRUE(RmsNormForward(x_dev.data(), g, y_dev.data(), rstd_dev.data(), s.rows, s.dim,
                                 kEps, stream_)
                      .ok());
      ASSERT_TRUE(RmsNormBackward(dy_dev.data(), x_dev.data(), g, rstd_dev.data(), dx_dev.data(),
                                  affine ? dgamma_dev.data() : nullptr, s.rows, s.dim, stream_)
                      .ok());
      Sync();

      std::vector<float> y(s.rows * s.dim), rstd(s.rows), dx(s.rows * s.dim);
      cpu::RmsNormForward(x.data(), affine ? gamma.data() : nullptr, y.data(), rstd.data(), s.rows,
                          s.dim, kEps);
      cpu::RmsNormBackward(dy.data(), x.data(), affine ? gamma.data() : nullptr, rstd.data(),
                           dx.data(), affine ? dgamma_cpu.data() : nullptr, s.rows, s.dim);
      EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance);
      EXPECT_LT(NormalizedMaxError(rstd_dev.ToHost(), rstd), kTolerance);
      EXPECT_LT(NormalizedMaxError(dx_dev.ToHost(), dx), kTolerance);
      EXPECT_LT(NormalizedMaxError(dgamma_dev.ToHost(), dgamma_cpu), kTolerance);
    }
  }
}

TEST_F(CudaLayerNormTest, ParameterGradientsAreBitwiseDeterministic) {
  const int64_t rows = 4097, dim = 257;
  const std::vector<float> x = RandomVector(rows * dim, 7);
  const std::vector<float> dy = RandomVector(rows * dim, 8);
  const std::vector<float> gamma = RandomVector(dim, 9);
  DeviceVector x_dev(x), dy_dev(dy), gamma_dev(gamma), beta_dev(dim);
  DeviceVector y_dev(rows * dim), mean_dev(rows), rstd_dev(rows), dx_dev(rows * dim);
  ASSERT_TRUE(LayerNormForward(x_dev.data(), gamma_dev.data(), beta_dev.data(), y_dev.data(),
                               mean_dev.data(), rstd_dev.data(), rows, dim, kEps, stream_)
                  .ok());
  std::vector<float> first_dgamma, first_dbeta;
  for (int run = 0; run < 3; ++run) {
    DeviceVector dgamma(dim), dbeta(dim);
    ASSERT_TRUE(LayerNormBackward(dy_dev.data(), x_dev.data(), gamma_dev.data(), mean_dev.data(),
                                  rstd_dev.data(), dx_dev.data(), dgamma.data(), dbeta.data(), rows,
                                  dim, stream_)
                    .ok());
    Sync();
    if (run == 0) {
      first_dgamma = dgamma.ToHost();
      first_dbeta = dbeta.ToHost();
    } else {
      EXPECT_EQ(dgamma.ToHost(), first_dgamma);
      EXPECT_EQ(dbeta.ToHost(), first_dbeta);
    }
  }
}

// Argument checks come before any CUDA call, so these run without a device.
TEST(CudaLayerNorm, RejectsNegativeSizesAndAcceptsZeroRowsWithoutADevice) {
  EXPECT_EQ(
      LayerNormForward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, -1, 4, kEps, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      RmsNormBackward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 2, -3, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  float mean = 0.0f;
  EXPECT_TRUE(
      LayerNormForward(nullptr, nullptr, nullptr, nullptr, &mean, nullptr, 0, 4, kEps, nullptr)
          .ok());
  EXPECT_TRUE(
      RmsNormBackward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 8, nullptr).ok());
}

}  // namespace
}  // namespace tessera::cuda
