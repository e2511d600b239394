// ReadIdxU8 on headers found by the idx_importer fuzz target (fuzz/): sizes
// from a header are not trusted with an allocation or a product.
#include <chrono>
#include <vector>

#include "data/idx.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using ::testing::HasSubstr;
using testing_util::FreshDir;
using testing_util::IdxBytes;
using testing_util::WriteMaybeGz;

TEST(ReadIdxU8, HugeDimensionsAreRefusedWithoutOverflow) {
  // 3 x (2^32 - 1): the element count overflows int64 if multiplied blindly.
  for (bool gz : {false, true}) {
    const std::string path = FreshDir("huge") + "/images";
    WriteMaybeGz(path, IdxBytes({0xffffffffu, 0xffffffffu, 0xffffffffu}, {}), gz);
    absl::StatusOr<IdxArray> array = ReadIdxU8(path, 3);
    ASSERT_FALSE(array.ok());
    EXPECT_EQ(ExitCodeFor(array.status()), 3);
    EXPECT_THAT(array.status().message(), HasSubstr("implausible dimensions"));
    EXPECT_THAT(array.status().message(), HasSubstr(path));
  }
}

TEST(ReadIdxU8, ShortFilePromisingTerabytesIsTruncatedNotAllocated) {
  // The fuzzer's input (a header of 2 x 4 x 822083588 = 6.6 GB: the reader
  // allocated all of it before reading) and one of 2^13 x 2^13 x 2^13 = 2^39
  // bytes, each over 16 bytes of data: only what arrives may be allocated.
  const std::vector<std::vector<uint32_t>> headers = {{2, 4, 0x31000004u}, {8192, 8192, 8192}};
  for (const auto& dims : headers) {
    for (bool gz : {false, true}) {
      const std::string path = FreshDir("short") + "/images";
      WriteMaybeGz(path, IdxBytes(dims, std::vector<uint8_t>(16, 7)), gz);
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<IdxArray> array = ReadIdxU8(path, 3);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      ASSERT_FALSE(array.ok());
      EXPECT_EQ(ExitCodeFor(array.status()), 3);
      EXPECT_THAT(array.status().message(), HasSubstr("truncated"));
      EXPECT_THAT(array.status().message(), HasSubstr("the file has 16"));
      EXPECT_LT(seconds, 2.0);
    }
  }
}

TEST(ReadIdxU8, ZeroDimensionReadsAnEmptyArray) {
  const std::string path = FreshDir("empty") + "/labels";
  WriteMaybeGz(path, IdxBytes({0}, {}), false);
  absl::StatusOr<IdxArray> array = ReadIdxU8(path, 1);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->dims, std::vector<int64_t>{0});
  EXPECT_TRUE(array->data.empty());
}

TEST(ReadIdxU8, DataLargerThanOneChunkReadsWhole) {
  // 3 x 1000 x 1000 = 3 MB: several 1 MiB read chunks, the last one partial.
  const std::string path = FreshDir("big") + "/images";
  std::vector<uint8_t> data(size_t{3} * 1000 * 1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 131 >> 7);
  WriteMaybeGz(path, IdxBytes({3, 1000, 1000}, data), false);
  absl::StatusOr<IdxArray> array = ReadIdxU8(path, 3);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->dims, (std::vector<int64_t>{3, 1000, 1000}));
  EXPECT_TRUE(array->data == data);
}

}  // namespace
}  // namespace tessera
