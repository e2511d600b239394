// train.device: which backend a run gets for each request, build and machine.
#include "runtime/backend/device_select.h"

#include <gtest/gtest.h>

#include "runtime/base/errors.h"

namespace tessera {
namespace {

TEST(DeviceSelect, AutoTakesCudaOnlyWhenTheBuildHasItAndADeviceIsVisible) {
  EXPECT_EQ(*ResolveDevice("auto", true, 1), Device::kCuda);
  EXPECT_EQ(*ResolveDevice("", true, 8), Device::kCuda);
  EXPECT_EQ(*ResolveDevice("auto", true, 0), Device::kCpu);   // a CUDA build on a CPU node
  EXPECT_EQ(*ResolveDevice("auto", false, 4), Device::kCpu);  // a CPU build on a GPU node
}

TEST(DeviceSelect, CpuIsAlwaysAvailable) {
  EXPECT_EQ(*ResolveDevice("cpu", true, 8), Device::kCpu);
  EXPECT_EQ(*ResolveDevice("cpu", false, 0), Device::kCpu);
}

TEST(DeviceSelect, CudaWithoutTheBuildOrADeviceIsAUsageErrorSayingWhich) {
  EXPECT_EQ(*ResolveDevice("cuda", true, 2), Device::kCuda);
  const absl::Status no_build = ResolveDevice("cuda", false, 2).status();
  EXPECT_EQ(ExitCodeFor(no_build), ExitCodeFor(UsageError("")));
  EXPECT_NE(no_build.message().find("built without CUDA"), std::string::npos) << no_build;
  const absl::Status no_device = ResolveDevice("cuda", true, 0).status();
  EXPECT_EQ(ExitCodeFor(no_device), ExitCodeFor(UsageError("")));
  EXPECT_NE(no_device.message().find("no CUDA device"), std::string::npos) << no_device;
}

TEST(DeviceSelect, AnUnknownDeviceNamesTheField) {
  const absl::Status status = ResolveDevice("gpu", true, 1).status();
  EXPECT_NE(status.message().find("train.device"), std::string::npos) << status;
  EXPECT_NE(status.message().find("\"gpu\""), std::string::npos) << status;
}

TEST(DeviceSelect, TheMachineAnswersAgreeWithTheBuild) {
  if (!BuildHasCuda()) {
    EXPECT_EQ(VisibleCudaDevices(), 0);
    EXPECT_FALSE(CreateCudaBackend(0).ok());
  }
  if (BuildHasCuda() && VisibleCudaDevices() == 0) {
    // Without a device the backend cannot start, and says so.
    const auto backend = CreateCudaBackend(0);
    ASSERT_FALSE(backend.ok());
    EXPECT_NE(backend.status().message().find("CUDA device 0"), std::string::npos)
        << backend.status();
  }
}

}  // namespace
}  // namespace tessera
