// Host code reads only host memory: Tensor::data<T>() refuses a tensor whose
// memory belongs to a device, so a host-only assumption fails loudly on the
// first GPU run instead of misreading memory.
#include <gtest/gtest.h>

#include "runtime/backend/cpu_backend.h"
#include "runtime/tensor/arena.h"
#include "runtime/tensor/host_access.h"
#include "runtime/tensor/tensor.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

// PretendDeviceBackend: host memory that calls itself a device's, what a
// host-only read of GPU memory looks like to Tensor, without needing a GPU.
TEST(HostCheck, ReadingADeviceTensorOnTheHostFailsWithACheck) {
  PretendDeviceBackend device;
  Tensor t = Tensor::Empty(DType::kF32, Shape{4}, device);
  EXPECT_FALSE(t.on_host());
  EXPECT_DEATH(t.data<float>(), "check failed.*on_host");
  EXPECT_DEATH(t.raw(), "check failed.*on_host");
  // Views and arena tensors inherit where their storage lives.
  EXPECT_DEATH(t.Slice(1, 3).data<float>(), "on_host");
  Arena arena(device);
  EXPECT_DEATH(arena.Allocate(DType::kI32, Shape{2}).data<int32_t>(), "on_host");
}

TEST(HostCheck, BackendPointersAndHostCopiesStayAvailable) {
  PretendDeviceBackend device;
  Tensor t = Tensor::Empty(DType::kF32, Shape{3}, device);
  const float values[3] = {1, 2, 3};
  device.CopyToDevice(t.address(), values, sizeof(values));
  EXPECT_NE(t.ptr<float>(), nullptr);       // for the backend's ops
  Tensor host = HostReadable(t);             // a copy, checked host memory
  EXPECT_TRUE(host.on_host());
  EXPECT_NE(host.address(), t.address());
  EXPECT_EQ(host.data<float>()[2], 3.0f);
  host.data<float>()[0] = 7;
  WriteBack(host, t);
  float back[3];
  device.CopyToHost(back, t.address(), sizeof(back));
  EXPECT_EQ(back[0], 7.0f);
}

TEST(HostCheck, HostTensorsReadDirectlyAndHostReadableIsZeroCopy) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{2});
  t.data<float>()[1] = 5;
  Tensor view = HostReadable(t);
  EXPECT_EQ(view.address(), t.address());
  EXPECT_EQ(view.data<float>()[1], 5.0f);
}

}  // namespace
}  // namespace tessera
