// Checked calls into the CUDA runtime, cuBLASLt and NCCL (after NCCL's
// src/include/checks.h).
//
//   TESSERA_CUDA(cudaMemcpyAsync(...));
//   TESSERA_CUBLAS(cublasLtMatmul(...));
//   TESSERA_NCCL(ncclAllReduce(...));
//
// On failure each macro RETURNS from the enclosing function (which returns
// absl::Status or absl::StatusOr<T>) a Status naming the call, file:line and
// the library's error string. NCCL failures carry ErrorCategory::kCommunication
// so `launch/` exits with the communication code. The rank is not known here;
// parallel/ prefixes it when the Status crosses into a collective.
//
// The *Status functions give the same Status as a value, for code that must
// not return early (destructors, tests).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "runtime/base/errors.h"

namespace tessera::cuda {

inline absl::Status CudaStatus(cudaError_t error, absl::string_view call, absl::string_view file,
                               int line) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s failed at %s:%d: %s (%s)", call, file, line,
                                             cudaGetErrorString(error), cudaGetErrorName(error)));
}

inline absl::Status CublasStatus(cublasStatus_t status, absl::string_view call,
                                 absl::string_view file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s failed at %s:%d: %s (%d)", call, file, line,
                                             cublasLtGetStatusString(status),
                                             static_cast<int>(status)));
}

inline absl::Status NcclStatus(ncclResult_t result, absl::string_view call, absl::string_view file,
                               int line) {
  if (result == ncclSuccess) return absl::OkStatus();
  // ncclGetLastError holds the detail (which peer, which transport) when there is one.
  const char* detail = ncclGetLastError(nullptr);
  return CommunicationError(absl::StrFormat("%s failed at %s:%d: %s%s%s", call, file, line,
                                            ncclGetErrorString(result),
                                            detail && *detail ? ": " : "", detail ? detail : ""));
}

}  // namespace tessera::cuda

#define TESSERA_CUDA_RETURN_IMPL(status_expr)                    \
  do {                                                           \
    ::absl::Status tessera_cuda_status_ = (status_expr);         \
    if (!tessera_cuda_status_.ok()) return tessera_cuda_status_; \
  } while (0)

#define TESSERA_CUDA(expr) \
  TESSERA_CUDA_RETURN_IMPL(::tessera::cuda::CudaStatus((expr), #expr, __FILE__, __LINE__))
#define TESSERA_CUBLAS(expr) \
  TESSERA_CUDA_RETURN_IMPL(::tessera::cuda::CublasStatus((expr), #expr, __FILE__, __LINE__))
#define TESSERA_NCCL(expr) \
  TESSERA_CUDA_RETURN_IMPL(::tessera::cuda::NcclStatus((expr), #expr, __FILE__, __LINE__))

// After a <<<...>>> launch: a bad configuration (too many threads, too much
// shared memory) only shows up in cudaGetLastError.
#define TESSERA_CUDA_LAUNCH() TESSERA_CUDA(cudaGetLastError())
