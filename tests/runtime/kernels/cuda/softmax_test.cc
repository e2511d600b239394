#include "runtime/kernels/cuda/softmax.h"

#include <gtest/gtest.h>

#include <vector>

#include "runtime/kernels/cpu/softmax.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using testing::DeviceVector;
using testing::NormalizedMaxError;
using testing::RandomVector;

constexpr double kTolerance = 1e-5;

using CudaSoftmaxTest = testing::CudaTest;

TEST_F(CudaSoftmaxTest, ForwardAndBackwardMatchCpuIncludingLargeLogits) {
  struct Case {
    int64_t rows, dim;
    float scale;  // logit magnitude: 30 would overflow exp without the max shift
  };
  uint64_t seed = 1;
  for (const Case& c : {Case{1, 1, 1.0f}, Case{5, 31, 1.0f}, Case{66, 1000, 3.0f},
                        Case{9, 4097, 30.0f}, Case{3, 7, 100.0f}}) {
    SCOPED_TRACE(::testing::Message()
                 << "rows=" << c.rows << " dim=" << c.dim << " scale=" << c.scale);
    const std::vector<float> x = RandomVector(c.rows * c.dim, seed++, c.scale);
    const std::vector<float> dy = RandomVector(c.rows * c.dim, seed++);
    DeviceVector x_dev(x), dy_dev(dy), y_dev(c.rows * c.dim);
    DeviceVector dx_dev(RandomVector(c.rows * c.dim, seed++));  // overwritten
    ASSERT_TRUE(SoftmaxForward(x_dev.data(), y_dev.data(), c.rows, c.dim, stream_).ok());
    ASSERT_TRUE(
        SoftmaxBackward(dy_dev.data(), y_dev.data(), dx_dev.data(), c.rows, c.dim, stream_).ok());
    Sync();

    std::vector<float> y(c.rows * c.dim), dx(c.rows * c.dim);
    cpu::SoftmaxForward(x.data(), y.data(), c.rows, c.dim);
    cpu::SoftmaxBackward(dy.data(), y.data(), dx.data(), c.rows, c.dim);
    EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance);
    EXPECT_LT(NormalizedMaxError(dx_dev.ToHost(), dx), kTolerance);
  }
}

TEST(CudaSoftmax, RejectsNegativeSizesAndAcceptsEmptyInputWithoutADevice) {
  EXPECT_EQ(SoftmaxForward(nullptr, nullptr, -2, 3, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(SoftmaxForward(nullptr, nullptr, 0, 3, nullptr).ok());
  EXPECT_TRUE(SoftmaxBackward(nullptr, nullptr, nullptr, 4, 0, nullptr).ok());
}

}  // namespace
}  // namespace tessera::cuda
