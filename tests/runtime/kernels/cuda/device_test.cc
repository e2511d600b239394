#include "runtime/kernels/cuda/device.h"

#include <gtest/gtest.h>

#include <vector>

#include "absl/strings/match.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

TEST(CudaDevice, DeviceCountIsNonNegativeAndStable) {
  const int count = DeviceCount();
  EXPECT_GE(count, 0);
  EXPECT_EQ(DeviceCount(), count);
}

TEST(CudaDevice, SetDeviceRejectsAnOutOfRangeIndex) {
  EXPECT_EQ(SetDevice(DeviceCount()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetDevice(-1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaDevice, ZeroByteBufferNeedsNoDevice) {
  auto buffer = DeviceBuffer::Create(0);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  EXPECT_EQ(buffer->data(), nullptr);
  EXPECT_TRUE(buffer->CopyFromHost(nullptr, 0).ok());
  EXPECT_TRUE(buffer->CopyToHost(nullptr, 0).ok());
}

TEST(CudaDevice, AllocationWithoutDeviceIsAStatusNamingCudaMalloc) {
  if (DeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  auto buffer = DeviceBuffer::Create(1024);
  ASSERT_FALSE(buffer.ok());
  EXPECT_TRUE(absl::StrContains(buffer.status().message(), "cudaMalloc")) << buffer.status();
}

using DeviceBufferTest = testing::CudaTest;

TEST_F(DeviceBufferTest, RoundTripsHostDataAndRejectsOversizedCopies) {
  const std::vector<float> host = testing::RandomVector(1001, /*seed=*/1);
  auto buffer = DeviceBuffer::Create(host.size() * sizeof(float));
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  ASSERT_TRUE(buffer->CopyFromHost(host.data(), host.size() * sizeof(float)).ok());
  std::vector<float> back(host.size());
  ASSERT_TRUE(buffer->CopyToHost(back.data(), back.size() * sizeof(float)).ok());
  EXPECT_EQ(back, host);

  std::vector<float> too_big(host.size() + 1);
  EXPECT_EQ(buffer->CopyFromHost(too_big.data(), too_big.size() * sizeof(float)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(buffer->CopyToHost(too_big.data(), too_big.size() * sizeof(float)).code(),
            absl::StatusCode::kInvalidArgument);

  // Moving transfers ownership: the moved-from buffer is empty.
  DeviceBuffer moved = std::move(buffer).value();
  EXPECT_EQ(moved.bytes(), host.size() * sizeof(float));
  std::fill(back.begin(), back.end(), 0.0f);
  ASSERT_TRUE(moved.CopyToHost(back.data(), back.size() * sizeof(float)).ok());
  EXPECT_EQ(back, host);
}

}  // namespace
}  // namespace tessera::cuda
