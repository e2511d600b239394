#include "data/interaction_reader.h"

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
using testing_util::RawDataset;
using testing_util::WriteRawManifest;
using testing_util::WriteRawShard;

constexpr int64_t kItems = 50;

// User u of the test data: id 1000 + u, (u * 3) % 7 events (0 included),
// event j: item (u * 11 + j * 5) % 50, time 100 * u + 10 * j, rating u + j / 4.
struct User {
  int64_t id;
  std::vector<int64_t> items, times;
  std::vector<float> ratings;
};
User MakeUser(int64_t u) {
  User user{1000 + u, {}, {}, {}};
  for (int64_t j = 0; j < (u * 3) % 7; ++j) {
    user.items.push_back((u * 11 + j * 5) % kItems);
    user.times.push_back(100 * u + 10 * j);
    user.ratings.push_back(static_cast<float>(u) + static_cast<float>(j) / 4);
  }
  return user;
}

// Users [0, n) in shards of `per_shard`, written with DatasetWriter.
std::string WriteUsers(const std::string& name, int64_t n, int64_t per_shard, bool ratings) {
  const std::string dir = FreshDir(name);
  auto writer = DatasetWriter::Create(dir, "interactions");
  EXPECT_TRUE(writer.ok());
  for (int64_t begin = 0; begin < n; begin += per_shard) {
    std::vector<int64_t> ids, offsets = {0}, items, times;
    std::vector<float> rates;
    for (int64_t u = begin; u < std::min(n, begin + per_shard); ++u) {
      const User user = MakeUser(u);
      ids.push_back(user.id);
      items.insert(items.end(), user.items.begin(), user.items.end());
      times.insert(times.end(), user.times.begin(), user.times.end());
      rates.insert(rates.end(), user.ratings.begin(), user.ratings.end());
      offsets.push_back(static_cast<int64_t>(items.size()));
    }
    const int64_t u = static_cast<int64_t>(ids.size()), e = static_cast<int64_t>(items.size());
    std::vector<DatasetData> datasets = {{"user_ids", ids.data(), {u}},
                                         {"offsets", offsets.data(), {u + 1}},
                                         {"item_ids", items.data(), {e}},
                                         {"timestamps", times.data(), {e}}};
    if (ratings) datasets.push_back({"ratings", rates.data(), {e}});
    EXPECT_TRUE(writer->AddShard(datasets).ok());
  }
  EXPECT_TRUE(writer->Finish({{"num_items", std::to_string(kItems)}}, "test").ok());
  return dir;
}

InteractionReaderOptions Options(const std::string& dir, int64_t global_batch,
                                 int64_t max_len = 0) {
  InteractionReaderOptions options;
  options.dir = dir;
  options.global_batch = global_batch;
  options.max_len = max_len;
  options.seed = 3;
  options.prefetch = 2;
  return options;
}

// Checks a batch against MakeUser of its indices, cut to the last max_len events.
void ExpectBatchMatchesUsers(const InteractionBatch& batch, int64_t max_len, bool ratings) {
  const int64_t b = static_cast<int64_t>(batch.indices.size());
  ASSERT_EQ(batch.offsets.shape(), (Shape{b + 1}));
  ASSERT_EQ(batch.user_ids.shape(), (Shape{b}));
  const int64_t* offsets = batch.offsets.data<int64_t>();
  EXPECT_EQ(offsets[0], 0);
  std::vector<int64_t> items, times;
  std::vector<float> rates;
  for (int64_t i = 0; i < b; ++i) {
    const User user = MakeUser(batch.indices[i]);
    EXPECT_EQ(batch.user_ids.data<int64_t>()[i], user.id);
    const size_t n = user.items.size();
    const size_t keep = max_len > 0 ? std::min<size_t>(n, static_cast<size_t>(max_len)) : n;
    EXPECT_EQ(offsets[i + 1] - offsets[i], static_cast<int64_t>(keep)) << "user " << user.id;
    items.insert(items.end(), user.items.end() - keep, user.items.end());
    times.insert(times.end(), user.times.end() - keep, user.times.end());
    rates.insert(rates.end(), user.ratings.end() - keep, user.ratings.end());
  }
  ASSERT_EQ(batch.num_events, static_cast<int64_t>(items.size()));
  ASSERT_EQ(batch.item_ids.shape(), (Shape{batch.num_events}));
  EXPECT_EQ(std::vector<int64_t>(batch.item_ids.data<int64_t>(),
                                 batch.item_ids.data<int64_t>() + batch.num_events),
            items);
  EXPECT_EQ(std::vector<int64_t>(batch.timestamps.data<int64_t>(),
                                 batch.timestamps.data<int64_t>() + batch.num_events),
            times);
  ASSERT_EQ(batch.ratings.defined(), ratings);
  if (ratings) {
    EXPECT_EQ(std::vector<float>(batch.ratings.data<float>(),
                                 batch.ratings.data<float>() + batch.num_events),
              rates);
  }
}

TEST(InteractionReader, JaggedBatchesHoldEachSampledUsersHistory) {
  const std::string dir = WriteUsers("d", 23, 5, true);
  auto reader = InteractionReader::Open(Options(dir, 6));
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->num_samples(), 23);
  Sampler oracle(23, 3);
  for (int step = 0; step < 9; ++step) {
    auto batch = (*reader)->Next();
    ASSERT_TRUE(batch.ok()) << batch.status();
    EXPECT_EQ(batch->indices, oracle.NextGlobalBatch(6));
    ExpectBatchMatchesUsers(*batch, 0, true);
  }
}

TEST(InteractionReader, MaxLenKeepsTheMostRecentEvents) {
  const std::string dir = WriteUsers("d", 14, 4, false);
  for (int64_t max_len : {1, 3, 6}) {
    auto reader = InteractionReader::Open(Options(dir, 7, max_len));
    ASSERT_TRUE(reader.ok()) << reader.status();
    for (int step = 0; step < 4; ++step) {
      auto batch = (*reader)->Next();
      ASSERT_TRUE(batch.ok()) << batch.status();
      ExpectBatchMatchesUsers(*batch, max_len, false);
    }
  }
}

TEST(InteractionReader, ResumesExactlyWithAnotherReplicaCount) {
  const std::string dir = WriteUsers("d", 17, 6, true);
  auto straight = InteractionReader::Open(Options(dir, 6));
  ASSERT_TRUE(straight.ok());
  std::vector<std::vector<int64_t>> expected;
  SamplerState after_two;
  for (int step = 0; step < 7; ++step) {
    auto batch = (*straight)->Next();
    ASSERT_TRUE(batch.ok());
    expected.push_back(batch->indices);
    if (step == 1) after_two = batch->state_after;
  }
  std::vector<std::unique_ptr<InteractionReader>> replicas;
  for (int r = 0; r < 3; ++r) {
    InteractionReaderOptions options = Options(dir, 6);
    options.replica = r;
    options.num_replicas = 3;
    options.start = after_two;
    auto reader = InteractionReader::Open(options);
    ASSERT_TRUE(reader.ok()) << reader.status();
    replicas.push_back(std::move(*reader));
  }
  for (int step = 2; step < 7; ++step) {
    std::vector<InteractionBatch> shares;
    for (auto& replica : replicas) {
      auto batch = replica->Next();
      ASSERT_TRUE(batch.ok());
      ExpectBatchMatchesUsers(*batch, 0, true);
      shares.push_back(std::move(*batch));
    }
    std::vector<int64_t> global;
    for (int j = 0; j < 6; ++j) global.push_back(shares[j % 3].indices[j / 3]);
    EXPECT_EQ(global, expected[step]);
  }
}

// One raw interactions shard `s.h5` in a fresh folder with a hand-written manifest.
std::string RawInteractions(const std::string& name, const std::vector<int64_t>& offsets,
                            const std::vector<int64_t>& items, const std::vector<int64_t>& times) {
  const std::string dir = FreshDir(name);
  const std::vector<int64_t> ids(offsets.size() - 1, 7);
  const hsize_t u = ids.size(), e = items.size();
  WriteRawShard(dir + "/s.h5", "interactions", 1,
                {{"user_ids", H5T_STD_I64LE, H5T_NATIVE_INT64, {u}, ids.data()},
                 {"offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {u + 1}, offsets.data()},
                 {"item_ids", H5T_STD_I64LE, H5T_NATIVE_INT64, {e}, items.data()},
                 {"timestamps", H5T_STD_I64LE, H5T_NATIVE_INT64, {e}, times.data()}});
  WriteRawManifest(dir, "interactions", {{"s.h5", static_cast<int64_t>(u)}},
                   {{"num_items", std::to_string(kItems)}});
  return dir;
}

// Reads one unshuffled batch of every user and expects a data error (exit 3)
// whose message holds each of `parts`.
void ExpectReadError(const std::string& dir, int64_t users, const std::vector<std::string>& parts) {
  InteractionReaderOptions options = Options(dir, users);
  options.shuffle = false;
  auto reader = InteractionReader::Open(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const absl::Status status = (*reader)->Next().status();
  EXPECT_EQ(ExitCodeFor(status), 3) << status;
  for (const std::string& part : parts) EXPECT_THAT(std::string(status.message()), HasSubstr(part));
}

TEST(InteractionReader, BadShardsAreDataErrorsNamingFileAndField) {
  const std::vector<int64_t> items = {1, 2, 3, 4}, times = {5, 6, 7, 8};
  ExpectReadError(RawInteractions("decreasing", {0, 3, 2, 4}, items, times), 3,
                  {"s.h5", "dataset \"offsets\" decreases at entry 2"});
  ExpectReadError(RawInteractions("beyond", {0, 2, 5}, items, times), 2,
                  {"s.h5", "dataset \"offsets\" ends at 5, \"item_ids\" has 4 rows"});
  ExpectReadError(RawInteractions("start", {1, 2, 4}, items, times), 2,
                  {"s.h5", "dataset \"offsets\" starts at 1, expected 0"});
  ExpectReadError(RawInteractions("item", {0, 2, 4}, {1, 2, kItems, 4}, times), 2,
                  {"s.h5: dataset \"item_ids\" entry 2 is 50, outside [0, num_items 50)"});
  ExpectReadError(RawInteractions("negative", {0, 2, 4}, {1, 2, 3, -4}, times), 2,
                  {"s.h5: dataset \"item_ids\" entry 3 is -4"});
  ExpectReadError(
      RawInteractions("time", {0, 2, 4}, items, {5, 6, 9, 8}), 2,
      {"s.h5: dataset \"timestamps\" entry 3 is 8, before the user's previous event (9) at row 1"});
  // Equal timestamps, and a decrease across two users, are allowed.
  const std::string ok = RawInteractions("ties", {0, 2, 4}, items, {5, 5, 1, 1});
  auto reader = InteractionReader::Open(Options(ok, 2));
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE((*reader)->Next().ok());
}

TEST(InteractionReader, RefusesBadOptions) {
  const std::string dir = WriteUsers("d", 4, 4, false);
  EXPECT_EQ(ExitCodeFor(InteractionReader::Open(Options(dir, 2, -1)).status()), 2);
  InteractionReaderOptions small = Options(dir, 2);
  small.num_items = 10;
  const absl::Status status = InteractionReader::Open(small).status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_THAT(std::string(status.message()), HasSubstr("num_items (10)"));
  InteractionReaderOptions huge_batch = Options(dir, int64_t{1} << 40);
  EXPECT_EQ(ExitCodeFor(InteractionReader::Open(huge_batch).status()), 2);
}

}  // namespace
}  // namespace tessera
