#include "data/manifest.h"

#include <zlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "data/dataset_writer.h"
#include "data/file_util.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using ::testing::HasSubstr;
using testing_util::FreshDir;

// Writes an images data set of `n` known samples [1, 3, 2] in shards of `per_shard`.
void WriteSmallDataset(const std::string& dir, int64_t n, int64_t per_shard) {
  const auto source = testing_util::MakeSourceImages(n, 1, 3, 2, 5);
  ImageArrays arrays{source.pixels.data(), source.labels.data(), n, 1, 3, 2};
  ASSERT_TRUE(WriteImagesDataset(dir, arrays, 5, per_shard, "test").ok());
}

std::string ManifestText(const std::string& dir) {
  const auto bytes = testing_util::ReadBytes(dir + "/manifest.textproto");
  return std::string(bytes.begin(), bytes.end());
}
void WriteManifestText(const std::string& dir, const std::string& text) {
  testing_util::WriteBytes(dir + "/manifest.textproto",
                           std::vector<uint8_t>(text.begin(), text.end()));
}
void ReplaceInManifest(const std::string& dir, const std::string& from, const std::string& to) {
  std::string text = ManifestText(dir);
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in\n" << text;
  text.replace(at, from.size(), to);
  WriteManifestText(dir, text);
}

void ExpectDataError(const absl::Status& status, const std::vector<std::string>& fragments) {
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 3) << status;
  for (const std::string& fragment : fragments) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(fragment));
  }
}

TEST(Manifest, RoundTripRecordsShardsCountsSizesAndZlibChecksums) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 10, 4);
  auto manifest = ReadManifest(dir);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->schema(), "images");
  EXPECT_EQ(manifest->version(), 1);
  EXPECT_EQ(manifest->num_samples(), 10);
  EXPECT_EQ(manifest->source(), "test");
  EXPECT_EQ(manifest->attributes().at("channels"), "1");
  EXPECT_EQ(manifest->attributes().at("height"), "3");
  EXPECT_EQ(manifest->attributes().at("width"), "2");
  EXPECT_EQ(manifest->attributes().at("num_classes"), "5");
  ASSERT_EQ(manifest->shards_size(), 3);
  const int64_t expected_counts[] = {4, 4, 2};
  for (int i = 0; i < 3; ++i) {
    const ShardEntry& shard = manifest->shards(i);
    EXPECT_EQ(shard.path(), absl::StrFormat("shard-%05d.h5", i));
    EXPECT_EQ(shard.num_samples(), expected_counts[i]);
    // Oracle: zlib's crc32 over the bytes as the test reads them.
    const auto bytes = testing_util::ReadBytes(dir + "/" + shard.path());
    const uLong crc = crc32(crc32(0L, Z_NULL, 0), bytes.data(), static_cast<uInt>(bytes.size()));
    EXPECT_EQ(shard.checksum(), absl::StrFormat("crc32:%08x", crc));
    EXPECT_EQ(shard.bytes(), static_cast<int64_t>(bytes.size()));
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << entry.path();
  }
  EXPECT_TRUE(VerifyDataset(dir).ok()) << VerifyDataset(dir);
}

TEST(Manifest, WriteThenReadPreservesEveryField) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 3, 3);
  auto original = ReadManifest(dir);
  ASSERT_TRUE(original.ok());
  DataManifest edited = *original;
  (*edited.mutable_attributes())["note"] = "x y";
  edited.set_source("elsewhere");
  ASSERT_TRUE(WriteManifest(dir, edited).ok());
  auto read = ReadManifest(dir);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*read, edited));
  EXPECT_EQ(read->attributes().at("note"), "x y");
  EXPECT_EQ(read->source(), "elsewhere");
  EXPECT_EQ(read->shards(0).checksum(), original->shards(0).checksum());
}

TEST(Manifest, MissingManifestNamesTheFile) {
  const std::string dir = FreshDir("d");
  ExpectDataError(ReadManifest(dir).status(), {dir + "/manifest.textproto: not found"});
}

TEST(Manifest, ParseErrorsGiveTheLine) {
  const std::string dir = FreshDir("d");
  WriteManifestText(dir, "schema: \"images\"\nversion: one\n");
  ExpectDataError(ReadManifest(dir).status(), {"manifest.textproto: line 2"});
}

TEST(Manifest, UnknownSchemaIsNamed) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 3, 3);
  ReplaceInManifest(dir, "schema: \"images\"", "schema: \"videos\"");
  ExpectDataError(ReadManifest(dir).status(),
                  {"manifest.textproto: schema: unknown schema \"videos\""});
}

TEST(Manifest, MissingShardFileIsNamed) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 6, 3);
  std::filesystem::remove(dir + "/shard-00001.h5");
  ExpectDataError(ReadManifest(dir).status(),
                  {"shards[1].path", dir + "/shard-00001.h5 is missing"});
}

TEST(Manifest, SampleCountMismatchIsNamed) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 6, 3);
  ReplaceInManifest(dir, "num_samples: 6", "num_samples: 7");
  ExpectDataError(ReadManifest(dir).status(), {"num_samples is 7 but the shards hold 6"});
}

TEST(Manifest, ShardSizeChangeIsCaughtWithoutReadingTheShard) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 6, 3);
  const std::string shard = dir + "/shard-00000.h5";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 10);
  ExpectDataError(ReadManifest(dir).status(), {"shards[0]", "truncated or replaced"});
}

TEST(Manifest, RequiresImageAttributesAndPlainRelativePaths) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 3, 3);
  const std::string good = ManifestText(dir);
  ReplaceInManifest(dir, "key: \"height\"", "key: \"rows\"");
  ExpectDataError(ReadManifest(dir).status(), {"attributes[\"height\"] is missing"});
  WriteManifestText(dir, good);
  ReplaceInManifest(dir, "path: \"shard-00000.h5\"", "path: \"../shard-00000.h5\"");
  ExpectDataError(ReadManifest(dir).status(), {"shards[0].path \"../shard-00000.h5\""});
  WriteManifestText(dir, good);
  ReplaceInManifest(dir, "checksum: \"crc32:", "checksum: \"md5:");
  ExpectDataError(ReadManifest(dir).status(), {"shards[0].checksum"});
}

TEST(VerifyDataset, CatchesOneFlippedByte) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 8, 4);
  ASSERT_TRUE(VerifyDataset(dir).ok());
  const std::string shard = dir + "/shard-00001.h5";
  auto bytes = testing_util::ReadBytes(shard);
  bytes[bytes.size() - 5] ^= 0x01;  // inside the pixel data; the file stays valid HDF5
  testing_util::WriteBytes(shard, bytes);
  ASSERT_TRUE(ReadManifest(dir).ok());  // same size: only the checksum can tell
  ExpectDataError(VerifyDataset(dir), {shard + ": checksum is crc32:", "says crc32:"});
}

TEST(VerifyDataset, CatchesAShardWithTheWrongSampleCount) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 8, 4);
  // Replace shard 1 by a valid 3-sample shard and fix size and checksum in
  // the manifest: only the count disagrees.
  const auto source = testing_util::MakeSourceImages(3, 1, 3, 2, 5);
  const std::string shard = dir + "/shard-00001.h5";
  ASSERT_TRUE(
      WriteImagesShard(shard, ImageArrays{source.pixels.data(), source.labels.data(), 3, 1, 3, 2})
          .ok());
  ASSERT_FALSE(ReadManifest(dir).ok());  // the size changed
  DataManifest edited;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(ManifestText(dir), &edited));
  auto checksum = ChecksumFile(shard);
  ASSERT_TRUE(checksum.ok());
  edited.mutable_shards(1)->set_checksum(FormatCrc32(checksum->crc32));
  edited.mutable_shards(1)->set_bytes(checksum->bytes);
  ASSERT_TRUE(WriteManifest(dir, edited).ok());
  ExpectDataError(VerifyDataset(dir), {shard + ": holds 3 samples", "says 4"});
}

TEST(DatasetWriter, RewritingAFolderRemovesItsManifestFirst) {
  const std::string dir = FreshDir("d");
  WriteSmallDataset(dir, 3, 3);
  ASSERT_TRUE(ReadManifest(dir).ok());
  auto writer = DatasetWriter::Create(dir, "images");
  ASSERT_TRUE(writer.ok());
  // An import interrupted here leaves no manifest: the folder is no data set.
  EXPECT_FALSE(std::filesystem::exists(dir + "/manifest.textproto"));
  const auto source = testing_util::MakeSourceImages(2, 1, 3, 2, 5);
  ASSERT_TRUE(
      writer->AddShard(ImagesDatasets({source.pixels.data(), source.labels.data(), 2, 1, 3, 2}))
          .ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/manifest.textproto"));
  ASSERT_TRUE(
      writer
          ->Finish({{"channels", "1"}, {"height", "3"}, {"width", "2"}, {"num_classes", "5"}},
                   "rewrite")
          .ok());
  auto manifest = ReadManifest(dir);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->num_samples(), 2);
}

}  // namespace
}  // namespace tessera
