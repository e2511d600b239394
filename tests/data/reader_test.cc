#include "data/reader.h"

#include <filesystem>
#include <thread>
#include <vector>

#include "data/dataset_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using ::testing::HasSubstr;
using testing_util::FreshDir;
using testing_util::SourceLabel;
using testing_util::SourcePixel;

constexpr int kClasses = 6;

// A data set of `n` known images [c, h, w] in shards of `per_shard`.
std::string MakeDataset(const std::string& name, int64_t n, int c, int h, int w,
                        int64_t per_shard) {
  const std::string dir = FreshDir(name);
  const auto source = testing_util::MakeSourceImages(n, c, h, w, kClasses);
  ImageArrays arrays{source.pixels.data(), source.labels.data(), n, c, h, w};
  EXPECT_TRUE(WriteImagesDataset(dir, arrays, kClasses, per_shard, "test").ok());
  return dir;
}

// Checks `batch` against the source values (SourcePixel, SourceLabel) of its
// indices, mapped to [-1, 1] and padded with -1.
void ExpectBatchMatchesSource(const ImageBatch& batch, int c, int h, int w, int pad_to = 0) {
  const int64_t b = static_cast<int64_t>(batch.indices.size());
  const int out_h = pad_to ? pad_to : h, out_w = pad_to ? pad_to : w;
  ASSERT_EQ(batch.images.shape(), (Shape{b, c, out_h, out_w}));
  ASSERT_EQ(batch.labels.shape(), (Shape{b}));
  const int top = (out_h - h) / 2, left = (out_w - w) / 2;
  const float* images = batch.images.data<float>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t index = batch.indices[i];
    EXPECT_EQ(batch.labels.data<int32_t>()[i], SourceLabel(index, kClasses));
    for (int ch = 0; ch < c; ++ch) {
      for (int y = 0; y < out_h; ++y) {
        for (int x = 0; x < out_w; ++x) {
          const bool inside = y >= top && y < top + h && x >= left && x < left + w;
          const double expected =
              inside ? SourcePixel(index, ch, y - top, x - left) / 127.5 - 1.0 : -1.0;
          const float got = images[((i * c + ch) * out_h + y) * out_w + x];
          ASSERT_NEAR(got, expected, 1e-6)
              << "sample " << index << " c" << ch << " y" << y << " x" << x;
        }
      }
    }
  }
}

ImageReaderOptions Options(const std::string& dir, int64_t global_batch) {
  ImageReaderOptions options;
  options.dir = dir;
  options.global_batch = global_batch;
  options.seed = 17;
  options.prefetch = 3;
  return options;
}

TEST(ImageReader, BatchesHoldTheSampledIndicesPixelsAndLabels) {
  // 23 samples in shards of 5 (the last has 3), two replicas, batches of 6:
  // several epochs, batches straddling shards and epochs.
  const std::string dir = MakeDataset("d", 23, 2, 3, 4, 5);
  Sampler oracle(23, 17);
  std::vector<std::unique_ptr<ImageReader>> readers;
  for (int r = 0; r < 2; ++r) {
    ImageReaderOptions options = Options(dir, 6);
    options.replica = r;
    options.num_replicas = 2;
    auto reader = ImageReader::Open(options);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ((*reader)->num_samples(), 23);
    EXPECT_EQ((*reader)->channels(), 2);
    EXPECT_EQ((*reader)->height(), 3);
    EXPECT_EQ((*reader)->width(), 4);
    EXPECT_EQ((*reader)->num_classes(), kClasses);
    readers.push_back(std::move(*reader));
  }
  for (int step = 0; step < 12; ++step) {
    const auto global = oracle.NextGlobalBatch(6);
    for (int r = 0; r < 2; ++r) {
      auto batch = readers[r]->Next();
      ASSERT_TRUE(batch.ok()) << batch.status();
      EXPECT_EQ(batch->indices, Sampler::ReplicaShare(global, r, 2));
      EXPECT_EQ(batch->state_after, oracle.state());
      ExpectBatchMatchesSource(*batch, 2, 3, 4);
    }
  }
}

TEST(ImageReader, PadsCenteredWithMinusOne) {
  const std::string dir = MakeDataset("d", 9, 1, 3, 4, 4);
  ImageReaderOptions options = Options(dir, 4);
  options.pad_to = 7;  // rows 2..4, columns 1..4
  auto reader = ImageReader::Open(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->height(), 7);
  EXPECT_EQ((*reader)->width(), 7);
  for (int step = 0; step < 3; ++step) {
    auto batch = (*reader)->Next();
    ASSERT_TRUE(batch.ok()) << batch.status();
    ExpectBatchMatchesSource(*batch, 1, 3, 4, 7);
  }
}

TEST(ImageReader, ResumingWithAnotherReplicaCountContinuesTheGlobalSequence) {
  const std::string dir = MakeDataset("d", 29, 1, 2, 2, 8);
  // Reference: one replica, 8 steps of 6.
  std::vector<std::vector<int64_t>> reference;
  {
    auto reader = ImageReader::Open(Options(dir, 6));
    ASSERT_TRUE(reader.ok());
    for (int step = 0; step < 8; ++step) reference.push_back((*reader)->Next()->indices);
  }
  // Three steps on 2 replicas, then resume on 3 replicas from the saved state.
  SamplerState saved;
  auto run_steps = [&](int replicas, SamplerState start, int first_step, int steps) {
    std::vector<std::unique_ptr<ImageReader>> readers;
    for (int r = 0; r < replicas; ++r) {
      ImageReaderOptions options = Options(dir, 6);
      options.replica = r;
      options.num_replicas = replicas;
      options.start = start;
      readers.push_back(std::move(*ImageReader::Open(options)));
    }
    for (int step = first_step; step < first_step + steps; ++step) {
      std::vector<int64_t> global(6);
      for (int r = 0; r < replicas; ++r) {
        auto batch = readers[r]->Next();
        ASSERT_TRUE(batch.ok()) << batch.status();
        for (size_t k = 0; k < batch->indices.size(); ++k) {
          global[k * replicas + r] = batch->indices[k];  // undo the stride split
        }
        saved = batch->state_after;
      }
      EXPECT_EQ(global, reference[step]) << "step " << step << " on " << replicas << " replicas";
    }
  };
  run_steps(2, SamplerState{}, 0, 3);
  EXPECT_EQ(saved, (SamplerState{0, 18}));
  run_steps(3, saved, 3, 5);
}

TEST(ImageReader, OpenNamesTheFolderOrOptionAtFault) {
  const std::string missing = FreshDir("missing") + "/nothing";
  auto status = ImageReader::Open(Options(missing, 4)).status();
  EXPECT_EQ(ExitCodeFor(status), 3);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("data.dir \"" + missing + "\": no manifest.textproto"));

  const std::string dir = MakeDataset("d", 10, 1, 5, 5, 10);
  ImageReaderOptions options = Options(dir, 6);
  options.num_replicas = 4;
  status = ImageReader::Open(options).status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_THAT(std::string(status.message()), HasSubstr("train.global_batch (6)"));

  options = Options(dir, 4);
  options.pad_to = 4;
  status = ImageReader::Open(options).status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_THAT(std::string(status.message()), HasSubstr("pad_to (4)"));

  options = Options(dir, 4);
  options.start = SamplerState{0, 11};
  EXPECT_EQ(ExitCodeFor(ImageReader::Open(options).status()), 2);

  options = Options(dir, 4);
  options.replica = 1;
  EXPECT_EQ(ExitCodeFor(ImageReader::Open(options).status()), 2);
}

TEST(ImageReader, RefusesOtherSchemas) {
  const std::string dir = FreshDir("tokens");
  auto writer = DatasetWriter::Create(dir, "tokens");
  ASSERT_TRUE(writer.ok());
  const std::vector<int32_t> tokens = {1, 2};
  const std::vector<int64_t> offsets = {0, 2};
  ASSERT_TRUE(
      writer->AddShard({{"tokens", tokens.data(), {2}}, {"doc_offsets", offsets.data(), {2}}})
          .ok());
  ASSERT_TRUE(writer->Finish({{"vocab_size", "3"}, {"eod_token", "0"}}, "test").ok());
  const absl::Status status = ImageReader::Open(Options(dir, 1)).status();
  EXPECT_EQ(ExitCodeFor(status), 3);
  EXPECT_THAT(std::string(status.message()), HasSubstr("schema is \"tokens\""));
}

TEST(ImageReader, AShardCorruptedAfterOpenFailsExactlyTheBatchThatNeedsIt) {
  // Two shards of 10; unshuffled batches of 2: batches 0-4 read shard 0,
  // batch 5 is the first to need shard 1.
  const std::string dir = MakeDataset("d", 20, 1, 4, 4, 10);
  ImageReaderOptions options = Options(dir, 2);
  options.shuffle = false;
  options.prefetch = 4;
  auto reader = ImageReader::Open(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::string shard = dir + "/shard-00001.h5";
  const auto size = std::filesystem::file_size(shard);
  testing_util::WriteBytes(shard, std::vector<uint8_t>(size, 0xab));  // same size, not HDF5
  for (int step = 0; step < 5; ++step) {
    auto batch = (*reader)->Next();
    ASSERT_TRUE(batch.ok()) << "step " << step << ": " << batch.status();
    ExpectBatchMatchesSource(*batch, 1, 4, 4);
  }
  for (int attempt = 0; attempt < 2; ++attempt) {  // the error sticks
    const absl::Status status = (*reader)->Next().status();
    EXPECT_EQ(ExitCodeFor(status), 3) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(shard));
  }
}

TEST(ImageReader, ATruncatedShardIsADataErrorFromNext) {
  const std::string dir = MakeDataset("d", 400, 1, 28, 28, 400);
  auto reader = ImageReader::Open(Options(dir, 8));
  ASSERT_TRUE(reader.ok());
  const std::string shard = dir + "/shard-00000.h5";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 4096);
  const absl::Status status = (*reader)->Next().status();
  EXPECT_EQ(ExitCodeFor(status), 3) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(shard));
  EXPECT_THAT(std::string(status.message()), HasSubstr("truncated"));
}

TEST(ImageReader, DestructionStopsTheIoThreadWhateverItIsDoing) {
  const std::string dir = MakeDataset("d", 50, 1, 8, 8, 16);
  {  // never started
    auto reader = ImageReader::Open(Options(dir, 4));
    ASSERT_TRUE(reader.ok());
  }
  {  // queue full: the I/O thread waits for room; give it time to fill up
    ImageReaderOptions options = Options(dir, 4);
    options.prefetch = 2;
    auto reader = ImageReader::Open(options);
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE((*reader)->Next().ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  {  // after an error
    auto reader = ImageReader::Open(Options(dir, 4));
    ASSERT_TRUE(reader.ok());
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.path().extension() == ".h5") std::filesystem::resize_file(entry.path(), 64);
    }
    EXPECT_FALSE((*reader)->Next().ok());
  }
}

TEST(ImageReader, ReadersOnSeveralThreadsShareHdf5Safely) {
  const std::string dir = MakeDataset("d", 64, 1, 6, 6, 7);
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      ImageReaderOptions options = Options(dir, 8);
      options.seed = static_cast<uint64_t>(t);
      options.prefetch = 1 + t;
      auto reader = ImageReader::Open(options);
      if (!reader.ok()) {
        ++failures[t];
        return;
      }
      for (int step = 0; step < 20; ++step) {
        auto batch = (*reader)->Next();
        if (!batch.ok()) {
          ++failures[t];
          return;
        }
        for (size_t i = 0; i < batch->indices.size(); ++i) {
          const int64_t index = batch->indices[i];
          // Spot check: first and last pixel, label.
          if (batch->labels.data<int32_t>()[i] != SourceLabel(index, kClasses) ||
              batch->images.data<float>()[i * 36] !=
                  static_cast<float>(SourcePixel(index, 0, 0, 0)) / 127.5f - 1.0f ||
              batch->images.data<float>()[i * 36 + 35] !=
                  static_cast<float>(SourcePixel(index, 0, 5, 5)) / 127.5f - 1.0f) {
            ++failures[t];
          }
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

}  // namespace
}  // namespace tessera
