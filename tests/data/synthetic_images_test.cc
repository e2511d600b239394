#include "data/synthetic_images.h"

#include <vector>

#include "data/manifest.h"
#include "data/reader.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using testing_util::FreshDir;

struct Loaded {
  std::vector<float> images;  // [n, pixels]
  std::vector<int32_t> labels;
};

Loaded LoadAll(const std::string& dir, int64_t n) {
  ImageReaderOptions options;
  options.dir = dir;
  options.global_batch = n;
  options.shuffle = false;
  auto reader = ImageReader::Open(options);
  EXPECT_TRUE(reader.ok()) << reader.status();
  auto batch = (*reader)->Next();
  EXPECT_TRUE(batch.ok()) << batch.status();
  Loaded loaded;
  loaded.images.assign(batch->images.data<float>(),
                       batch->images.data<float>() + batch->images.numel());
  loaded.labels.assign(batch->labels.data<int32_t>(), batch->labels.data<int32_t>() + n);
  return loaded;
}

TEST(SynthesizeImages, SameSeedSameDataForAnyShardSizeOtherSeedDiffers) {
  const std::string a = FreshDir("a"), b = FreshDir("b"), c = FreshDir("c");
  ASSERT_TRUE(SynthesizeImages(a, 30, 3, 5, 7, 4, 42, 7).ok());
  ASSERT_TRUE(SynthesizeImages(b, 30, 3, 5, 7, 4, 42, 30).ok());
  ASSERT_TRUE(SynthesizeImages(c, 30, 3, 5, 7, 4, 43, 7).ok());
  EXPECT_TRUE(VerifyDataset(a).ok());
  const Loaded la = LoadAll(a, 30), lb = LoadAll(b, 30), lc = LoadAll(c, 30);
  EXPECT_EQ(la.images, lb.images);
  EXPECT_EQ(la.labels, lb.labels);
  EXPECT_NE(la.images, lc.images);
  for (int32_t label : la.labels) {
    EXPECT_GE(label, 0);
    EXPECT_LT(label, 4);
  }
}

// The classes are learnable: a nearest-class-mean classifier fitted on half
// the samples labels the other half far better than chance (10%).
TEST(SynthesizeImages, ClassesAreSeparableByANearestMeanClassifier) {
  const std::string dir = FreshDir("d");
  const int64_t n = 1000;
  const int pixels = 16 * 16;
  ASSERT_TRUE(SynthesizeImages(dir, n, 1, 16, 16, 10, 7, 500).ok());
  const Loaded loaded = LoadAll(dir, n);
  std::vector<double> means(10 * pixels, 0.0);
  std::vector<int> counts(10, 0);
  for (int64_t i = 0; i < n / 2; ++i) {
    ++counts[loaded.labels[i]];
    for (int p = 0; p < pixels; ++p)
      means[loaded.labels[i] * pixels + p] += loaded.images[i * pixels + p];
  }
  for (int k = 0; k < 10; ++k) {
    ASSERT_GT(counts[k], 0);
    for (int p = 0; p < pixels; ++p) means[k * pixels + p] /= counts[k];
  }
  int correct = 0;
  for (int64_t i = n / 2; i < n; ++i) {
    int best = -1;
    double best_distance = 0;
    for (int k = 0; k < 10; ++k) {
      double distance = 0;
      for (int p = 0; p < pixels; ++p) {
        const double d = loaded.images[i * pixels + p] - means[k * pixels + p];
        distance += d * d;
      }
      if (best < 0 || distance < best_distance) {
        best = k;
        best_distance = distance;
      }
    }
    correct += best == loaded.labels[i];
  }
  EXPECT_GT(correct, 0.8 * (n / 2));
}

TEST(SynthesizeImages, RejectsNonPositiveSizes) {
  const absl::Status status = SynthesizeImages(FreshDir("d"), 10, 0, 5, 5, 3, 1, 5);
  EXPECT_EQ(ExitCodeFor(status), 2);
}

}  // namespace
}  // namespace tessera
