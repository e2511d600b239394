#include "runtime/kernels/cuda/activation.h"

#include <gtest/gtest.h>

#include <vector>

#include "runtime/kernels/cpu/activation.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using testing::DeviceVector;
using testing::NormalizedMaxError;
using testing::RandomVector;

constexpr double kTolerance = 1e-5;

using CudaActivationTest = testing::CudaTest;

// 1 element, a partial block, and more than one grid's worth of blocks.
constexpr int64_t kSizes[] = {1, 1000, 100003};

TEST_F(CudaActivationTest, SiluAndGeluMatchCpu) {
  uint64_t seed = 1;
  for (int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    // Scale 6 reaches the saturated tails of sigmoid and tanh.
    const std::vector<float> x = RandomVector(n, seed++, 6.0f);
    const std::vector<float> dy = RandomVector(n, seed++);
    DeviceVector x_dev(x), dy_dev(dy), y_dev(n), dx_dev(n);
    std::vector<float> y(n), dx(n);

    ASSERT_TRUE(SiluForward(x_dev.data(), y_dev.data(), n, stream_).ok());
    ASSERT_TRUE(SiluBackward(dy_dev.data(), x_dev.data(), dx_dev.data(), n, stream_).ok());
    Sync();
    cpu::SiluForward(x.data(), y.data(), n);
    cpu::SiluBackward(dy.data(), x.data(), dx.data(), n);
    EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance) << "silu";
    EXPECT_LT(NormalizedMaxError(dx_dev.ToHost(), dx), kTolerance) << "silu backward";

    ASSERT_TRUE(GeluForward(x_dev.data(), y_dev.data(), n, stream_).ok());
    ASSERT_TRUE(GeluBackward(dy_dev.data(), x_dev.data(), dx_dev.data(), n, stream_).ok());
    Sync();
    cpu::GeluForward(x.data(), y.data(), n);
    cpu::GeluBackward(dy.data(), x.data(), dx.data(), n);
    EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance) << "gelu";
    EXPECT_LT(NormalizedMaxError(dx_dev.ToHost(), dx), kTolerance) << "gelu backward";
  }
}

TEST_F(CudaActivationTest, SwigluMatchesCpu) {
  uint64_t seed = 50;
  for (auto [rows, hidden] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {129, 384}}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " hidden=" << hidden);
    const std::vector<float> x = RandomVector(rows * 2 * hidden, seed++, 3.0f);
    const std::vector<float> dy = RandomVector(rows * hidden, seed++);
    DeviceVector x_dev(x), dy_dev(dy), y_dev(rows * hidden);
    DeviceVector dx_dev(RandomVector(rows * 2 * hidden, seed++));  // overwritten
    ASSERT_TRUE(SwigluForward(x_dev.data(), y_dev.data(), rows, hidden, stream_).ok());
    ASSERT_TRUE(
        SwigluBackward(dy_dev.data(), x_dev.data(), dx_dev.data(), rows, hidden, stream_).ok());
    Sync();
    std::vector<float> y(rows * hidden), dx(rows * 2 * hidden);
    cpu::SwigluForward(x.data(), y.data(), rows, hidden);
    cpu::SwigluBackward(dy.data(), x.data(), dx.data(), rows, hidden);
    EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance);
    EXPECT_LT(NormalizedMaxError(dx_dev.ToHost(), dx), kTolerance);
  }
}

TEST_F(CudaActivationTest, AddInPlaceAddBiasRowsAndSumRowsAccumulateMatchCpu) {
  uint64_t seed = 80;
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{1, 1}, {5, 37}, {3001, 70}}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " dim=" << dim);
    std::vector<float> y = RandomVector(rows * dim, seed++);
    const std::vector<float> x = RandomVector(rows * dim, seed++);
    const std::vector<float> bias = RandomVector(dim, seed++);
    std::vector<float> dbias = RandomVector(dim, seed++);  // accumulated into
    DeviceVector y_dev(y), x_dev(x), bias_dev(bias), dbias_dev(dbias);
    ASSERT_TRUE(AddInPlace(y_dev.data(), x_dev.data(), rows * dim, stream_).ok());
    ASSERT_TRUE(AddBiasRows(y_dev.data(), bias_dev.data(), rows, dim, stream_).ok());
    ASSERT_TRUE(SumRowsAccumulate(x_dev.data(), dbias_dev.data(), rows, dim, stream_).ok());
    Sync();
    cpu::AddInPlace(y.data(), x.data(), rows * dim);
    cpu::AddBiasRows(y.data(), bias.data(), rows, dim);
    cpu::SumRowsAccumulate(x.data(), dbias.data(), rows, dim);
    EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance);
    EXPECT_LT(NormalizedMaxError(dbias_dev.ToHost(), dbias), kTolerance);
  }
}

TEST(CudaActivation, RejectsNegativeSizesAndAcceptsEmptyInputWithoutADevice) {
  EXPECT_EQ(SiluForward(nullptr, nullptr, -1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SwigluBackward(nullptr, nullptr, nullptr, 3, -1, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SumRowsAccumulate(nullptr, nullptr, -1, 3, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(GeluBackward(nullptr, nullptr, nullptr, 0, nullptr).ok());
  EXPECT_TRUE(SwigluForward(nullptr, nullptr, 0, 16, nullptr).ok());
  EXPECT_TRUE(AddBiasRows(nullptr, nullptr, 4, 0, nullptr).ok());
}

}  // namespace
}  // namespace tessera::cuda
