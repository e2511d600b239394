// `data verify` (VerifyDataset) and the readers refuse values and sizes a
// shard must not hold: labels outside [0, num_classes), forged sizes, token
// ids beyond the vocabulary, bad loss masks, items beyond the table,
// timestamps out of order.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "data/manifest.h"
#include "data/reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using ::testing::HasSubstr;
using testing_util::FreshDir;
using testing_util::WriteRawManifest;
using testing_util::WriteRawShard;

void ExpectVerifyError(const std::string& dir, const std::vector<std::string>& parts) {
  const absl::Status status = VerifyDataset(dir);
  EXPECT_EQ(ExitCodeFor(status), 3) << status;
  for (const std::string& part : parts) EXPECT_THAT(std::string(status.message()), HasSubstr(part));
}

const std::vector<std::pair<std::string, std::string>> kImageAttributes = {
    {"channels", "1"}, {"height", "2"}, {"width", "2"}, {"num_classes", "10"}};

// Four 1x2x2 images with `labels` in one raw shard and a manifest.
std::string ImagesWithLabels(const std::string& name, const std::vector<int32_t>& labels) {
  const std::string dir = FreshDir(name);
  const std::vector<uint8_t> pixels(labels.size() * 4, 7);
  const hsize_t n = labels.size();
  WriteRawShard(dir + "/s.h5", "images", 1,
                {{"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {n, 1, 2, 2}, pixels.data()},
                 {"labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {n}, labels.data()}});
  WriteRawManifest(dir, "images", {{"s.h5", static_cast<int64_t>(n)}}, kImageAttributes);
  return dir;
}

TEST(VerifyValues, LabelsOutsideTheClassesAreRefusedByVerifyAndTheReader) {
  EXPECT_TRUE(VerifyDataset(ImagesWithLabels("ok", {0, 9, 3, 1})).ok());
  for (int32_t bad : {255, -1, 10, 2147483647}) {
    const std::string dir = ImagesWithLabels("bad", {0, 1, bad, 2});
    ExpectVerifyError(dir, {"s.h5: dataset \"labels\" entry 2 is " + std::to_string(bad),
                            "outside [0, num_classes 10)"});
    ImageReaderOptions options;
    options.dir = dir;
    options.global_batch = 4;
    options.shuffle = false;
    auto reader = ImageReader::Open(options);
    ASSERT_TRUE(reader.ok()) << reader.status();
    const absl::Status status = (*reader)->Next().status();
    EXPECT_EQ(ExitCodeFor(status), 3);
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("s.h5: dataset \"labels\" entry 2 is " + std::to_string(bad)));
  }
}

// An images shard declaring N = 2^40 that stores no pixels: refused from its
// declared sizes before anything of that size is allocated.
TEST(VerifyValues, ShardsDeclaringAbsurdSizesAreRefusedBeforeAllocation) {
  const std::string dir = FreshDir("huge");
  const hsize_t n = hsize_t{1} << 40;
  WriteRawShard(dir + "/s.h5", "images", 1,
                {{"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {n, 1, 2, 2}, nullptr},
                 {"labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {n}, nullptr}});
  // The manifest agreeing with the shard: its count exceeds the file's bytes.
  WriteRawManifest(dir, "images", {{"s.h5", int64_t{1} << 40}}, kImageAttributes);
  ExpectVerifyError(dir, {"shards[0] declares 1099511627776 samples in a file of"});
  ImageReaderOptions options;
  options.dir = dir;
  options.global_batch = 4;
  EXPECT_EQ(ExitCodeFor(ImageReader::Open(options).status()), 3);

  // A modest manifest: the shard's own declared size is refused.
  WriteRawManifest(dir, "images", {{"s.h5", 4}}, kImageAttributes);
  ExpectVerifyError(dir, {"s.h5: dataset \"images\" declares [1099511627776, 1, 2, 2] = "
                          "4398046511104 bytes, but the file has only"});
  auto reader = ImageReader::Open(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const absl::Status status = (*reader)->Next().status();
  EXPECT_EQ(ExitCodeFor(status), 3);
  EXPECT_THAT(std::string(status.message()), HasSubstr("declares [1099511627776, 1, 2, 2]"));
}

TEST(VerifyValues, ContiguousDatasetsMustStoreEveryDeclaredByte) {
  const std::string dir = FreshDir("unwritten");
  const std::vector<int32_t> labels(100, 1);
  // 100 images declared, none stored: small enough to pass the file-size ratio.
  WriteRawShard(dir + "/s.h5", "images", 1,
                {{"images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {100, 1, 2, 2}, nullptr},
                 {"labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {100}, labels.data()}});
  WriteRawManifest(dir, "images", {{"s.h5", 100}}, kImageAttributes);
  ExpectVerifyError(dir, {"dataset \"images\" declares [100, 1, 2, 2] = 400 bytes, but the file "
                          "stores 0 for it"});
}

std::string RawTokens(const std::string& name, const std::vector<int32_t>& tokens,
                      const std::vector<uint8_t>* mask) {
  const std::string dir = FreshDir(name);
  const std::vector<int64_t> offsets = {0, 2, static_cast<int64_t>(tokens.size())};
  const hsize_t t = tokens.size();
  std::vector<testing_util::RawDataset> datasets = {
      {"tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {t}, tokens.data()},
      {"doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {3}, offsets.data()}};
  if (mask) datasets.push_back({"loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, {t}, mask->data()});
  WriteRawShard(dir + "/s.h5", "tokens", 1, datasets);
  WriteRawManifest(dir, "tokens", {{"s.h5", 2, static_cast<int64_t>(t)}},
                   {{"vocab_size", "20"}, {"eod_token", "19"}});
  return dir;
}

TEST(VerifyValues, TokensOutsideTheVocabularyAndBadLossMasks) {
  const std::vector<uint8_t> mask = {0, 1, 0, 1, 1};
  EXPECT_TRUE(VerifyDataset(RawTokens("ok", {1, 2, 3, 19, 0}, &mask)).ok());
  ExpectVerifyError(RawTokens("high", {1, 2, 3, 20, 0}, nullptr),
                    {"s.h5: dataset \"tokens\" entry 3 is 20, outside [0, vocab_size 20)"});
  ExpectVerifyError(RawTokens("negative", {1, -2, 3, 4, 0}, nullptr),
                    {"s.h5: dataset \"tokens\" entry 1 is -2"});
  const std::vector<uint8_t> bad_mask = {0, 1, 2, 1, 1};
  ExpectVerifyError(RawTokens("mask", {1, 2, 3, 4, 0}, &bad_mask),
                    {"s.h5: dataset \"loss_mask\" entry 2 is 2, not 0 or 1"});
}

TEST(VerifyValues, InteractionItemsBeyondTheTableAndTimestampsOutOfOrder) {
  auto make = [](const std::string& name, const std::vector<int64_t>& items,
                 const std::vector<int64_t>& times, const std::vector<float>& ratings) {
    const std::string dir = FreshDir(name);
    const std::vector<int64_t> ids = {4, 5}, offsets = {0, 3, 5};
    WriteRawShard(dir + "/s.h5", "interactions", 1,
                  {{"user_ids", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, ids.data()},
                   {"offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {3}, offsets.data()},
                   {"item_ids", H5T_STD_I64LE, H5T_NATIVE_INT64, {5}, items.data()},
                   {"timestamps", H5T_STD_I64LE, H5T_NATIVE_INT64, {5}, times.data()},
                   {"ratings", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {5}, ratings.data()}});
    WriteRawManifest(dir, "interactions", {{"s.h5", 2}}, {{"num_items", "8"}});
    return dir;
  };
  const std::vector<float> ratings = {1, 2, 3, 4, 5};
  EXPECT_TRUE(VerifyDataset(make("ok", {0, 7, 3, 3, 1}, {1, 1, 2, 0, 5}, ratings)).ok());
  ExpectVerifyError(make("item", {0, 8, 3, 3, 1}, {1, 1, 2, 0, 5}, ratings),
                    {"s.h5: dataset \"item_ids\" entry 1 is 8, outside [0, num_items 8)"});
  ExpectVerifyError(make("time", {0, 1, 3, 3, 1}, {1, 1, 2, 6, 5}, ratings),
                    {"s.h5: dataset \"timestamps\" entry 4 is 5, before the user's previous "
                     "event (6) at row 1"});
  ExpectVerifyError(make("nan", {0, 1, 3, 3, 1}, {1, 1, 2, 3, 5}, {1, 2, NAN, 4, 5}),
                    {"s.h5: dataset \"ratings\" entry 2 is nan, not a finite number"});
}

}  // namespace
}  // namespace tessera
