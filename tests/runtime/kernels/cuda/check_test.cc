#include "runtime/kernels/cuda/check.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"

namespace tessera::cuda {
namespace {

// These need no device: the error strings come from the runtime libraries.

int failing_cuda_line = 0;
absl::Status FailingCudaCall() {
  failing_cuda_line = __LINE__ + 1;
  TESSERA_CUDA(cudaErrorInvalidValue);
  return absl::OkStatus();
}
absl::Status FailingCublasCall() {
  TESSERA_CUBLAS(CUBLAS_STATUS_NOT_SUPPORTED);
  return absl::OkStatus();
}
absl::Status FailingNcclCall() {
  TESSERA_NCCL(ncclInvalidArgument);
  return absl::OkStatus();
}
absl::Status SucceedingCalls() {
  TESSERA_CUDA(cudaSuccess);
  TESSERA_CUBLAS(CUBLAS_STATUS_SUCCESS);
  TESSERA_NCCL(ncclSuccess);
  return absl::OkStatus();
}

TEST(CudaCheck, SuccessFallsThrough) { EXPECT_TRUE(SucceedingCalls().ok()); }

TEST(CudaCheck, CudaFailureNamesCallFileLineAndError) {
  const absl::Status status = FailingCudaCall();
  ASSERT_FALSE(status.ok());
  const std::string message(status.message());
  EXPECT_TRUE(absl::StrContains(message, "cudaErrorInvalidValue")) << message;
  EXPECT_TRUE(absl::StrContains(message, absl::StrCat("check_test.cc:", failing_cuda_line)))
      << message;
  EXPECT_TRUE(absl::StrContains(message, cudaGetErrorString(cudaErrorInvalidValue))) << message;
}

TEST(CudaCheck, CublasFailureNamesCallAndStatusString) {
  const absl::Status status = FailingCublasCall();
  ASSERT_FALSE(status.ok());
  const std::string message(status.message());
  EXPECT_TRUE(absl::StrContains(message, "CUBLAS_STATUS_NOT_SUPPORTED")) << message;
  EXPECT_TRUE(absl::StrContains(message, "check_test.cc:")) << message;
}

TEST(CudaCheck, NcclFailureIsACommunicationError) {
  const absl::Status status = FailingNcclCall();
  ASSERT_FALSE(status.ok());
  const std::string message(status.message());
  EXPECT_TRUE(absl::StrContains(message, "ncclInvalidArgument")) << message;
  EXPECT_TRUE(absl::StrContains(message, ncclGetErrorString(ncclInvalidArgument))) << message;
  EXPECT_EQ(ExitCodeFor(status), static_cast<int>(ErrorCategory::kCommunication));
}

}  // namespace
}  // namespace tessera::cuda
