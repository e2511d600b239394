// Which communicators a run's device buffers travel through
// (launch/device_comm.h): the rule, the variable and its errors.
#include "launch/device_comm.h"

#include <gtest/gtest.h>

#include "runtime/backend/device_select.h"
#include "runtime/base/errors.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

TEST(DeviceComm, CpuRunsUseTheMpiGroupsThemselvesWhateverTheVariable) {
  for (const char* variable : {"", "auto", "mpi", "nccl"}) {
    auto kind = ChooseDeviceComm(HostBackend(), 4, 0, variable);
    ASSERT_TRUE(kind.ok()) << kind.status();
    EXPECT_EQ(*kind, DeviceComm::kHost) << variable;
  }
}

TEST(DeviceComm, AGpuPerRankGetsNcclWhereTheBuildHasIt) {
  PretendDeviceBackend device;
  for (const char* variable : {"", "auto"}) {
    auto kind = ChooseDeviceComm(device, 2, 2, variable);
    ASSERT_TRUE(kind.ok()) << kind.status();
    EXPECT_EQ(*kind, BuildHasCuda() ? DeviceComm::kNccl : DeviceComm::kStagedMpi) << variable;
  }
}

TEST(DeviceComm, RanksSharingAGpuOrTesseraCommMpiStageThroughTheHost) {
  PretendDeviceBackend device;
  auto shared = ChooseDeviceComm(device, 4, 1, "");
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(*shared, DeviceComm::kStagedMpi);
  auto asked = ChooseDeviceComm(device, 2, 2, "mpi");
  ASSERT_TRUE(asked.ok()) << asked.status();
  EXPECT_EQ(*asked, DeviceComm::kStagedMpi);
}

TEST(DeviceComm, NcclWhereRanksShareAGpuAndUnknownValuesAreUsageErrors) {
  PretendDeviceBackend device;
  for (const auto& [variable, local_size] :
       std::vector<std::pair<const char*, int>>{{"nccl", 2}, {"gloo", 1}}) {
    const absl::Status status = ChooseDeviceComm(device, local_size, 1, variable).status();
    EXPECT_EQ(ExitCodeFor(status), 2) << status;
    EXPECT_NE(status.message().find("TESSERA_COMM"), std::string::npos) << status;
  }
}

}  // namespace
}  // namespace tessera
