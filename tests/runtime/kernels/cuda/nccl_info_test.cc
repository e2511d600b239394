#include "runtime/kernels/cuda/nccl_info.h"

#include <gtest/gtest.h>
#include <nccl.h>

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace tessera::cuda {
namespace {

// Runs everywhere: ncclGetVersion needs no device, so this proves NCCL is
// linked and loadable.
TEST(NcclInfo, VersionStringIsMajorMinorPatchOfTheLoadedLibrary) {
  const std::string version = NcclVersionString();
  const std::vector<std::string> parts = absl::StrSplit(version, '.');
  ASSERT_EQ(parts.size(), 3u) << version;
  int major = 0, minor = 0, patch = 0;
  ASSERT_TRUE(absl::SimpleAtoi(parts[0], &major)) << version;
  ASSERT_TRUE(absl::SimpleAtoi(parts[1], &minor)) << version;
  ASSERT_TRUE(absl::SimpleAtoi(parts[2], &patch)) << version;
  // The loaded library is the one we compiled against or a compatible newer
  // one of the same major version.
  EXPECT_EQ(major, NCCL_MAJOR);
  EXPECT_GE(major * 10000 + minor * 100 + patch, NCCL_VERSION_CODE) << version;

  int code = 0;
  ASSERT_EQ(ncclGetVersion(&code), ncclSuccess);
  EXPECT_EQ(code, major * 10000 + minor * 100 + patch);
}

TEST(NcclInfo, HeaderVersionCodeMatchesHeader) {
  EXPECT_EQ(NcclHeaderVersionCode(), NCCL_VERSION(NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH));
}

}  // namespace
}  // namespace tessera::cuda
