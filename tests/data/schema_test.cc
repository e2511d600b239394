#include "data/schema.h"

#include <filesystem>
#include <vector>

#include "data/shard_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::FreshDir;
using testing_util::RawDataset;
using testing_util::WriteRawShard;

// Expects a DataError (exit code 3) whose message contains every fragment.
void ExpectDataError(const absl::Status& status, const std::vector<std::string>& fragments) {
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 3) << status;
  for (const std::string& fragment : fragments) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(fragment));
  }
}

TEST(ValidateShard, AcceptsWrittenImagesShardAndReportsItsShape) {
  const std::string path = FreshDir("s") + "/shard.h5";
  const auto source = testing_util::MakeSourceImages(7, 2, 3, 5, 4);
  ImageArrays arrays{source.pixels.data(), source.labels.data(), 7, 2, 3, 5};
  ASSERT_TRUE(WriteImagesShard(path, arrays).ok());
  auto info = ValidateShard(path, "images");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->schema, "images");
  EXPECT_EQ(info->version, 1);
  EXPECT_EQ(info->num_samples, 7);
  EXPECT_EQ(info->dims.at("images"), (std::vector<int64_t>{7, 2, 3, 5}));
  EXPECT_EQ(info->dims.at("labels"), (std::vector<int64_t>{7}));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(ValidateShard, AcceptsEmptyImagesShard) {
  const std::string path = FreshDir("s") + "/shard.h5";
  ASSERT_TRUE(WriteImagesShard(path, ImageArrays{nullptr, nullptr, 0, 1, 28, 28}).ok());
  auto info = ValidateShard(path, "images");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_samples, 0);
}

TEST(ValidateShard, NamesFileAndBothSchemasWhenSchemaDiffers) {
  const std::string path = FreshDir("s") + "/shard-00001.h5";
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int64_t> offsets = {0, 3};
  ASSERT_TRUE(WriteShard(path, "tokens",
                         {{"tokens", tokens.data(), {3}}, {"doc_offsets", offsets.data(), {2}}})
                  .ok());
  ExpectDataError(ValidateShard(path, "images").status(),
                  {path + ": schema is \"tokens\", expected \"images\""});
}

TEST(ValidateShard, ReportsMissingDataset) {
  const std::string path = FreshDir("s") + "/shard.h5";
  const std::vector<uint8_t> pixels(2 * 4, 1);
  WriteRawShard(path, "images", 1,
                {{"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {2, 1, 2, 2}, pixels.data()}});
  ExpectDataError(ValidateShard(path, "images").status(), {path, "missing dataset \"labels\""});
}

TEST(ValidateShard, ReportsInconsistentRowCounts) {
  const std::string path = FreshDir("s") + "/shard.h5";
  const std::vector<uint8_t> pixels(10 * 4, 1);
  const std::vector<int32_t> labels(9, 0);
  WriteRawShard(path, "images", 1,
                {{"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {10, 1, 2, 2}, pixels.data()},
                 {"labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {9}, labels.data()}});
  ExpectDataError(ValidateShard(path, "images").status(),
                  {path + ": dataset \"labels\" has 9 rows, \"images\" has 10"});
}

TEST(ValidateShard, ReportsWrongTypeAndRank) {
  const std::string dir = FreshDir("s");
  const std::vector<uint8_t> pixels(3 * 4, 1);
  const std::vector<float> float_labels(3, 0);
  WriteRawShard(dir + "/type.h5", "images", 1,
                {{"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {3, 1, 2, 2}, pixels.data()},
                 {"labels", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {3}, float_labels.data()}});
  ExpectDataError(ValidateShard(dir + "/type.h5", "images").status(),
                  {"dataset \"labels\" has type float32, expected int32"});
  const std::vector<int32_t> labels(3, 0);
  WriteRawShard(dir + "/rank.h5", "images", 1,
                {{"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {3, 4}, pixels.data()},
                 {"labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {3}, labels.data()}});
  ExpectDataError(ValidateShard(dir + "/rank.h5", "images").status(),
                  {"dataset \"images\" has rank 2, expected 4"});
}

TEST(ValidateShard, ReportsMissingOrWrongAttributes) {
  const std::string dir = FreshDir("s");
  const std::vector<uint8_t> pixels(4, 1);
  const std::vector<int32_t> labels(1, 0);
  const std::vector<RawDataset> datasets = {
      {"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {1, 1, 2, 2}, pixels.data()},
      {"labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {1}, labels.data()}};
  WriteRawShard(dir + "/noschema.h5", nullptr, 1, datasets);
  ExpectDataError(ValidateShard(dir + "/noschema.h5", "images").status(),
                  {"no \"schema\" attribute"});
  WriteRawShard(dir + "/v2.h5", "images", 2, datasets);
  ExpectDataError(ValidateShard(dir + "/v2.h5", "images").status(),
                  {"version is 2, this build reads images version 1"});
}

TEST(ValidateShard, TruncatedShardIsADataErrorNotACrash) {
  const std::string path = FreshDir("s") + "/shard.h5";
  const auto source = testing_util::MakeSourceImages(500, 1, 28, 28, 10);
  ASSERT_TRUE(WriteImagesShard(
                  path, ImageArrays{source.pixels.data(), source.labels.data(), 500, 1, 28, 28})
                  .ok());
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size - 3000);
  ExpectDataError(ValidateShard(path, "images").status(), {path, "H5Fopen failed", "truncated"});
  // Truncated to almost nothing: no superblock left.
  std::filesystem::resize_file(path, 100);
  ExpectDataError(ValidateShard(path, "images").status(), {path, "H5Fopen failed"});
}

TEST(ValidateShard, NonHdf5AndMissingFilesAreDataErrors) {
  const std::string dir = FreshDir("s");
  testing_util::WriteBytes(dir + "/text.h5", std::vector<uint8_t>(1000, 'x'));
  ExpectDataError(ValidateShard(dir + "/text.h5", "images").status(), {dir + "/text.h5"});
  ExpectDataError(ValidateShard(dir + "/absent.h5", "images").status(), {dir + "/absent.h5"});
}

TEST(ValidateShard, TokensOffsetsMustEndAtTheTokenCount) {
  const std::string dir = FreshDir("s");
  const std::vector<int32_t> tokens = {5, 6, 7, 8, 9, 10};
  const std::vector<int64_t> good = {0, 2, 2, 6};  // three documents, one empty
  auto info = WriteShard(dir + "/good.h5", "tokens",
                         {{"tokens", tokens.data(), {6}}, {"doc_offsets", good.data(), {4}}});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_samples, 3);

  const std::vector<int64_t> short_offsets = {0, 3, 5};
  WriteRawShard(dir + "/short.h5", "tokens", 1,
                {{"tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {6}, tokens.data()},
                 {"doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {3}, short_offsets.data()}});
  ExpectDataError(ValidateShard(dir + "/short.h5", "tokens").status(),
                  {"dataset \"doc_offsets\" ends at 5, \"tokens\" has 6 rows"});

  const std::vector<int64_t> decreasing = {0, 4, 3, 6};
  WriteRawShard(dir + "/decreasing.h5", "tokens", 1,
                {{"tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {6}, tokens.data()},
                 {"doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {4}, decreasing.data()}});
  ExpectDataError(ValidateShard(dir + "/decreasing.h5", "tokens").status(),
                  {"\"doc_offsets\" decreases at entry 2"});

  // The writer validates before renaming: nothing appears under the final name.
  EXPECT_FALSE(
      WriteShard(dir + "/refused.h5", "tokens",
                 {{"tokens", tokens.data(), {6}}, {"doc_offsets", short_offsets.data(), {3}}})
          .ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/refused.h5"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/refused.h5.tmp"));
}

TEST(ValidateShard, InteractionsRatingsAreOptionalButMustMatchTheEventCount) {
  const std::string dir = FreshDir("s");
  const std::vector<int64_t> users = {10, 20};
  const std::vector<int64_t> offsets = {0, 2, 5};
  const std::vector<int64_t> items = {1, 2, 3, 4, 5};
  const std::vector<int64_t> times = {100, 101, 102, 103, 104};
  const std::vector<float> ratings = {1, 2, 3, 4};
  std::vector<DatasetData> datasets = {{"user_ids", users.data(), {2}},
                                       {"offsets", offsets.data(), {3}},
                                       {"item_ids", items.data(), {5}},
                                       {"timestamps", times.data(), {5}}};
  auto info = WriteShard(dir + "/no_ratings.h5", "interactions", datasets);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_samples, 2);
  EXPECT_EQ(info->dims.count("ratings"), 0u);

  datasets.push_back({"ratings", ratings.data(), {4}});
  const absl::Status status = WriteShard(dir + "/bad.h5", "interactions", datasets).status();
  ExpectDataError(status, {"dataset \"ratings\" has 4 rows, \"item_ids\" has 5"});

  const std::vector<int64_t> offsets_long = {0, 2, 5, 5};
  WriteRawShard(dir + "/offsets.h5", "interactions", 1,
                {{"user_ids", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, users.data()},
                 {"offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {4}, offsets_long.data()},
                 {"item_ids", H5T_STD_I64LE, H5T_NATIVE_INT64, {5}, items.data()},
                 {"timestamps", H5T_STD_I64LE, H5T_NATIVE_INT64, {5}, times.data()}});
  ExpectDataError(
      ValidateShard(dir + "/offsets.h5", "interactions").status(),
      {"dataset \"offsets\" has 4 rows, expected 3 (U+1 where \"user_ids\" has U = 2)"});
}

TEST(WriteShard, RejectsDatasetsTheSchemaDoesNotHave) {
  const std::string dir = FreshDir("s");
  const std::vector<int32_t> values = {1};
  const absl::Status status =
      WriteShard(dir + "/x.h5", "images", {{"pixels", values.data(), {1}}}).status();
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("no dataset \"pixels\""));
  EXPECT_FALSE(WriteShard(dir + "/x.h5", "videos", {}).ok());
}

TEST(FindSchema, ListsKnownSchemasForAnUnknownName) {
  const absl::Status status = FindSchema("videos").status();
  ExpectDataError(status, {"unknown schema \"videos\"", "images", "tokens", "interactions"});
}

}  // namespace
}  // namespace tessera
