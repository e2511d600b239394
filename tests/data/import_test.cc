#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "data/fashion_mnist.h"
#include "data/idx.h"
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
using testing_util::IdxBytes;
using testing_util::WriteMaybeGz;

struct Split {
  std::vector<uint8_t> pixels;
  std::vector<uint8_t> labels;
};

// `n` images of h x w with pixel (i, y, x) = (i * 37 + y * 5 + x) % 256 and
// label i % 10, written as IDX files `prefix`-{images-idx3,labels-idx1}-ubyte.
Split WriteSplit(const std::string& dir, const std::string& prefix, uint32_t n, uint32_t h,
                 uint32_t w, bool gz) {
  Split split;
  for (uint32_t i = 0; i < n; ++i) {
    split.labels.push_back(static_cast<uint8_t>(i % 10));
    for (uint32_t y = 0; y < h; ++y)
      for (uint32_t x = 0; x < w; ++x) split.pixels.push_back((i * 37 + y * 5 + x) % 256);
  }
  const std::string suffix = gz ? ".gz" : "";
  WriteMaybeGz(dir + "/" + prefix + "-images-idx3-ubyte" + suffix,
               IdxBytes({n, h, w}, split.pixels), gz);
  WriteMaybeGz(dir + "/" + prefix + "-labels-idx1-ubyte" + suffix, IdxBytes({n}, split.labels), gz);
  return split;
}

// Reads the whole data set in index order and compares with `split`.
void ExpectDatasetEquals(const std::string& dir, const Split& split, int64_t n, int h, int w) {
  ImageReaderOptions options;
  options.dir = dir;
  options.global_batch = n;
  options.shuffle = false;
  auto reader = ImageReader::Open(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->channels(), 1);
  EXPECT_EQ((*reader)->height(), h);
  EXPECT_EQ((*reader)->width(), w);
  EXPECT_EQ((*reader)->num_classes(), 10);
  auto batch = (*reader)->Next();
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(batch->labels.data<int32_t>()[i], split.labels[i]);
    for (int64_t p = 0; p < h * w; ++p) {
      ASSERT_NEAR(batch->images.data<float>()[i * h * w + p],
                  split.pixels[i * h * w + p] / 127.5 - 1, 1e-6);
    }
  }
}

void ExpectDataError(const absl::Status& status, const std::vector<std::string>& fragments) {
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 3) << status;
  for (const std::string& fragment : fragments) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(fragment));
  }
}

TEST(ImportFashionMnist, ImportsGzipAndPlainIdxFiles) {
  const std::string source = FreshDir("source"), out = FreshDir("out");
  const Split train = WriteSplit(source, "train", 11, 5, 3, /*gz=*/true);
  const Split test = WriteSplit(source, "t10k", 4, 5, 3, /*gz=*/false);
  ASSERT_TRUE(ImportFashionMnist(source, out, 4).ok());
  auto manifest = ReadManifest(out + "/train");
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->num_samples(), 11);
  EXPECT_EQ(manifest->shards_size(), 3);
  EXPECT_TRUE(VerifyDataset(out + "/train").ok());
  EXPECT_TRUE(VerifyDataset(out + "/test").ok());
  ExpectDatasetEquals(out + "/train", train, 11, 5, 3);
  ExpectDatasetEquals(out + "/test", test, 4, 5, 3);
}

TEST(ImportFashionMnist, MissingFileIsNamed) {
  const std::string source = FreshDir("source");
  WriteSplit(source, "train", 2, 2, 2, true);
  ExpectDataError(ImportFashionMnist(source, FreshDir("out"), 10),
                  {"neither t10k-images-idx3-ubyte.gz nor t10k-images-idx3-ubyte"});
}

TEST(ImportFashionMnist, WrongMagicNumberIsNamed) {
  const std::string source = FreshDir("source");
  WriteSplit(source, "train", 3, 2, 2, false);
  WriteSplit(source, "t10k", 3, 2, 2, false);
  // An images file where labels belong: rank 3, not 1.
  std::filesystem::copy_file(source + "/train-images-idx3-ubyte",
                             source + "/train-labels-idx1-ubyte",
                             std::filesystem::copy_options::overwrite_existing);
  ExpectDataError(ImportFashionMnist(source, FreshDir("out"), 10),
                  {source + "/train-labels-idx1-ubyte: magic number is 0x00000803, expected "
                            "0x00000801"});
}

TEST(ImportFashionMnist, TruncatedAndOverlongFilesAreNamed) {
  const std::string source = FreshDir("source");
  WriteSplit(source, "t10k", 3, 2, 2, false);
  auto bytes = IdxBytes({3, 2, 2}, std::vector<uint8_t>(12, 7));
  bytes.resize(bytes.size() - 1);
  WriteMaybeGz(source + "/train-images-idx3-ubyte.gz", bytes, true);
  WriteMaybeGz(source + "/train-labels-idx1-ubyte.gz", IdxBytes({3}, {1, 2, 3}), true);
  ExpectDataError(ImportFashionMnist(source, FreshDir("out"), 10),
                  {"train-images-idx3-ubyte.gz: truncated: the header promises 12 bytes of data, "
                   "the file has 11"});
  bytes.resize(bytes.size() + 2, 0);
  WriteMaybeGz(source + "/train-images-idx3-ubyte.gz", bytes, true);
  ExpectDataError(ImportFashionMnist(source, FreshDir("out"), 10),
                  {"train-images-idx3-ubyte.gz: more bytes than the header's 12"});
}

TEST(ImportFashionMnist, CorruptGzipStreamIsADataError) {
  const std::string source = FreshDir("source");
  WriteSplit(source, "train", 50, 8, 8, true);
  auto bytes = testing_util::ReadBytes(source + "/train-images-idx3-ubyte.gz");
  bytes.resize(bytes.size() / 2);  // cut the compressed stream
  testing_util::WriteBytes(source + "/train-images-idx3-ubyte.gz", bytes);
  ExpectDataError(ImportFashionMnist(source, FreshDir("out"), 10),
                  {source + "/train-images-idx3-ubyte.gz"});
}

TEST(ImportFashionMnist, CountMismatchAndBadLabelsAreNamed) {
  const std::string source = FreshDir("source");
  WriteSplit(source, "train", 3, 2, 2, false);
  WriteMaybeGz(source + "/train-labels-idx1-ubyte", IdxBytes({2}, {1, 2}), false);
  ExpectDataError(ImportFashionMnist(source, FreshDir("out"), 10),
                  {"holds 3 images but", "train-labels-idx1-ubyte holds 2 labels"});
  WriteMaybeGz(source + "/train-labels-idx1-ubyte", IdxBytes({3}, {1, 12, 3}), false);
  ExpectDataError(ImportFashionMnist(source, FreshDir("out"), 10),
                  {"train-labels-idx1-ubyte: label 12 of sample 1 is not below 10"});
}

// On the real data when the dataset-fashion-mnist package is installed:
// every pixel and label matches a direct decoding of the IDX files, a
// shuffled epoch visits each image once, and the read rate is printed.
TEST(ImportFashionMnist, RealFashionMnistRoundTripsAndReadsFast) {
  if (!std::filesystem::exists(std::string(kFashionMnistSystemDir) +
                               "/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashionMnistSystemDir;
  }
  const std::string out = FreshDir("out");
  ASSERT_TRUE(ImportFashionMnist(kFashionMnistSystemDir, out, 10000).ok());
  auto manifest = ReadManifest(out + "/train");
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->num_samples(), 60000);
  EXPECT_EQ(manifest->shards_size(), 6);
  auto test_manifest = ReadManifest(out + "/test");
  ASSERT_TRUE(test_manifest.ok());
  EXPECT_EQ(test_manifest->num_samples(), 10000);
  ASSERT_TRUE(VerifyDataset(out + "/train").ok());

  // Oracle: the test's own decoding of the IDX payload (16- and 8-byte headers).
  auto gunzip = [](const std::string& path) {
    std::vector<uint8_t> bytes;
    gzFile file = gzopen(path.c_str(), "rb");
    uint8_t buffer[1 << 16];
    int n;
    while ((n = gzread(file, buffer, sizeof(buffer))) > 0)
      bytes.insert(bytes.end(), buffer, buffer + n);
    gzclose(file);
    return bytes;
  };
  const auto pixels = gunzip(std::string(kFashionMnistSystemDir) + "/train-images-idx3-ubyte.gz");
  const auto labels = gunzip(std::string(kFashionMnistSystemDir) + "/train-labels-idx1-ubyte.gz");
  ASSERT_EQ(pixels.size(), 16u + 60000u * 784u);
  ASSERT_EQ(labels.size(), 8u + 60000u);

  ImageReaderOptions options;
  options.dir = out + "/train";
  options.global_batch = 100;
  options.seed = 1;
  auto reader = ImageReader::Open(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<int> seen(60000, 0);
  for (int step = 0; step < 600; ++step) {
    auto batch = (*reader)->Next();
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (size_t i = 0; i < batch->indices.size(); ++i) {
      const int64_t index = batch->indices[i];
      ++seen[index];
      ASSERT_EQ(batch->labels.data<int32_t>()[i], labels[8 + index]);
      const float* image = batch->images.data<float>() + i * 784;
      for (int p = 0; p < 784; ++p) {
        ASSERT_NEAR(image[p], pixels[16 + index * 784 + p] / 127.5 - 1, 1e-6);
      }
    }
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 60000);

  // The second epoch, timed without checks: what a trainer would see.
  const auto start = std::chrono::steady_clock::now();
  for (int step = 0; step < 600; ++step) ASSERT_TRUE((*reader)->Next().ok());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "[ info ] Fashion-MNIST train, one shuffled epoch in batches of 100: %.0f samples/s\n",
      60000 / seconds);
}

}  // namespace
}  // namespace tessera
