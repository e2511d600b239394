// Helpers for the CUDA kernel tests: every kernel is run on random inputs
// and compared with the CPU kernel of the same name (runtime/kernels/cpu/),
// which its own tests check against naive double references (the ggml
// test-backend-ops pattern).
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/base/random.h"
#include "runtime/kernels/cuda/device.h"

namespace tessera::cuda::testing {

// Gaussian values * scale, reproducible from `seed`.
inline std::vector<float> RandomVector(int64_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = scale * rng.Normal();
  return v;
}

// max |got - want| / max(max |want|, 1e-30): one number that does not grow
// with the magnitude of the data. Sizes must match.
inline double NormalizedMaxError(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double max_diff = 0.0;
  double max_ref = 0.0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    max_diff = std::isnan(diff) ? INFINITY : std::max(max_diff, diff);
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

// A device copy of a host vector, and the way back.
class DeviceVector {
 public:
  explicit DeviceVector(const std::vector<float>& host) : size_(host.size()) {
    auto buffer = DeviceBuffer::Create(host.size() * sizeof(float));
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    if (!buffer.ok()) return;
    buffer_ = std::move(buffer).value();
    const absl::Status status = buffer_.CopyFromHost(host.data(), host.size() * sizeof(float));
    EXPECT_TRUE(status.ok()) << status;
  }
  explicit DeviceVector(int64_t n) : DeviceVector(std::vector<float>(static_cast<size_t>(n))) {}

  float* data() const { return buffer_.as<float>(); }
  std::vector<float> ToHost() const {
    std::vector<float> host(size_);
    const absl::Status status = buffer_.CopyToHost(host.data(), size_ * sizeof(float));
    EXPECT_TRUE(status.ok()) << status;
    return host;
  }

 private:
  size_t size_;
  DeviceBuffer buffer_;
};

// Skips the test where no CUDA device is usable; otherwise gives it a stream
// of its own (so the kernels' stream argument is exercised, not just the
// default stream).
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (tessera::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(SetDevice(0).ok());
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) {
      EXPECT_EQ(cudaStreamDestroy(stream_), cudaSuccess);
    }
  }
  // Waits for the stream; results may be read after this.
  void Sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  cudaStream_t stream_ = nullptr;
};

}  // namespace tessera::cuda::testing
