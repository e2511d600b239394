#include "runtime/kernels/cuda/device.h"

#include <cuda_runtime_api.h>

#include <cstdio>

#include "absl/strings/str_format.h"
#include "runtime/kernels/cuda/check.h"

namespace tessera::cuda {

int DeviceCount() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    // cudaErrorInsufficientDriver, cudaErrorNoDevice, a missing libcuda...:
    // all mean "no usable GPU here". Clear the error so that a later
    // cudaGetLastError does not report it against an unrelated call.
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::Status SetDevice(int device) {
  const int count = DeviceCount();
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA device %d requested, %d visible", device, count));
  }
  TESSERA_CUDA(cudaSetDevice(device));
  return absl::OkStatus();
}

absl::Status Synchronize() {
  TESSERA_CUDA(cudaDeviceSynchronize());
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Create(size_t bytes) {
  if (bytes == 0) return DeviceBuffer();
  void* data = nullptr;
  TESSERA_CUDA(cudaMalloc(&data, bytes));
  return DeviceBuffer(data, bytes);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { Release(); }

void DeviceBuffer::Release() {
  if (data_ == nullptr) return;
  // A destructor cannot return a Status; a failing cudaFree means the context
  // is already broken and the next checked call will report it.
  const absl::Status status = CudaStatus(cudaFree(data_), "cudaFree", __FILE__, __LINE__);
  if (!status.ok()) std::fprintf(stderr, "tessera: %s\n", status.ToString().c_str());
  data_ = nullptr;
  bytes_ = 0;
}

absl::Status DeviceBuffer::CopyFromHost(const void* host, size_t bytes) {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("copy of %d bytes into a device buffer of %d", bytes, bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  TESSERA_CUDA(cudaMemcpy(data_, host, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::CopyToHost(void* host, size_t bytes) const {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("copy of %d bytes out of a device buffer of %d", bytes, bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  TESSERA_CUDA(cudaMemcpy(host, data_, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

}  // namespace tessera::cuda
