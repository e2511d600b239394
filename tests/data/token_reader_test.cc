#include "data/token_reader.h"

#include <algorithm>
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

constexpr int32_t kEod = 99;
constexpr int64_t kVocab = 100;

using Document = std::vector<int32_t>;
using Shard = std::vector<Document>;

// Document d of the test data: its length varies (0 included) and token j is
// a function of (d, j), so every window is distinct.
Document MakeDocument(int64_t d) {
  Document doc;
  const int64_t length = (d * 5 + 3) % 9;  // 3, 8, 4, 0, 5, …
  for (int64_t j = 0; j < length; ++j) doc.push_back(static_cast<int32_t>((d * 13 + j * 7) % 90));
  return doc;
}

// Writes `shards` with DatasetWriter (and per-token masks when `masks` is set).
std::string WriteTokens(const std::string& name, const std::vector<Shard>& shards,
                        const std::vector<std::vector<std::vector<uint8_t>>>* masks = nullptr) {
  const std::string dir = FreshDir(name);
  auto writer = DatasetWriter::Create(dir, "tokens");
  EXPECT_TRUE(writer.ok());
  for (size_t s = 0; s < shards.size(); ++s) {
    std::vector<int32_t> tokens;
    std::vector<uint8_t> mask;
    std::vector<int64_t> offsets = {0};
    for (size_t d = 0; d < shards[s].size(); ++d) {
      tokens.insert(tokens.end(), shards[s][d].begin(), shards[s][d].end());
      if (masks) mask.insert(mask.end(), (*masks)[s][d].begin(), (*masks)[s][d].end());
      offsets.push_back(static_cast<int64_t>(tokens.size()));
    }
    const int64_t t = static_cast<int64_t>(tokens.size());
    std::vector<DatasetData> datasets = {
        {"tokens", tokens.data(), {t}},
        {"doc_offsets", offsets.data(), {static_cast<int64_t>(offsets.size())}}};
    if (masks) datasets.push_back({"loss_mask", mask.data(), {t}});
    EXPECT_TRUE(writer->AddShard(datasets).ok());
  }
  EXPECT_TRUE(
      writer
          ->Finish({{"vocab_size", std::to_string(kVocab)}, {"eod_token", std::to_string(kEod)}},
                   "test")
          .ok());
  return dir;
}

// The naive oracle: each shard's stream (every document then kEod), cut into
// windows of seq_len + 1 starting every seq_len tokens, shards in order.
struct Window {
  std::vector<int32_t> tokens;
  std::vector<float> target_mask;  // [seq_len]
};
std::vector<Window> OracleWindows(const std::vector<Shard>& shards, int64_t seq_len,
                                  const std::vector<std::vector<std::vector<uint8_t>>>* masks) {
  std::vector<Window> windows;
  for (size_t s = 0; s < shards.size(); ++s) {
    std::vector<int32_t> stream;
    std::vector<uint8_t> stream_mask;
    for (size_t d = 0; d < shards[s].size(); ++d) {
      for (size_t j = 0; j < shards[s][d].size(); ++j) {
        stream.push_back(shards[s][d][j]);
        stream_mask.push_back(masks ? (*masks)[s][d][j] : 1);
      }
      stream.push_back(kEod);
      stream_mask.push_back(masks ? 0 : 1);
    }
    for (int64_t start = 0; start + seq_len + 1 <= static_cast<int64_t>(stream.size());
         start += seq_len) {
      Window w;
      w.tokens.assign(stream.begin() + start, stream.begin() + start + seq_len + 1);
      for (int64_t j = 1; j <= seq_len; ++j) w.target_mask.push_back(stream_mask[start + j]);
      windows.push_back(w);
    }
  }
  return windows;
}

// Three shards; the middle one holds one short document.
std::vector<Shard> TestShards() {
  std::vector<Shard> shards;
  int64_t d = 0;
  for (int n : {7, 1, 12}) {
    shards.emplace_back();
    for (int i = 0; i < n; ++i) shards.back().push_back(MakeDocument(d++));
  }
  return shards;
}

TokenReaderOptions Options(const std::string& dir, int64_t seq_len, int64_t global_batch) {
  TokenReaderOptions options;
  options.dir = dir;
  options.seq_len = seq_len;
  options.global_batch = global_batch;
  options.seed = 5;
  options.prefetch = 2;
  return options;
}

void ExpectWindow(const TokenBatch& batch, int64_t i, const Window& expected, int64_t seq_len) {
  const int32_t* tokens = batch.tokens.data<int32_t>() + i * (seq_len + 1);
  const float* mask = batch.loss_mask.data<float>() + i * seq_len;
  EXPECT_EQ(std::vector<int32_t>(tokens, tokens + seq_len + 1), expected.tokens)
      << "window " << batch.indices[i];
  EXPECT_EQ(std::vector<float>(mask, mask + seq_len), expected.target_mask)
      << "window " << batch.indices[i];
}

TEST(TokenReader, WindowsAreTheNaiveStreamCutEverySeqLenTokens) {
  const std::vector<Shard> shards = TestShards();
  const std::string dir = WriteTokens("d", shards);
  for (int64_t seq_len : {1, 4, 8, 13}) {
    const std::vector<Window> oracle = OracleWindows(shards, seq_len, nullptr);
    TokenReaderOptions options = Options(dir, seq_len, 3);
    options.shuffle = false;
    auto reader = TokenReader::Open(options);
    ASSERT_TRUE(reader.ok()) << reader.status();
    ASSERT_EQ((*reader)->num_samples(), static_cast<int64_t>(oracle.size())) << seq_len;
    for (int64_t step = 0; step * 3 < 2 * static_cast<int64_t>(oracle.size()); ++step) {
      auto batch = (*reader)->Next();
      ASSERT_TRUE(batch.ok()) << batch.status();
      ASSERT_EQ(batch->tokens.shape(), (Shape{3, seq_len + 1}));
      ASSERT_EQ(batch->loss_mask.shape(), (Shape{3, seq_len}));
      EXPECT_EQ(batch->num_targets, 3 * seq_len);
      for (int64_t i = 0; i < 3; ++i) {
        EXPECT_EQ(batch->indices[i], (step * 3 + i) % static_cast<int64_t>(oracle.size()));
        ExpectWindow(*batch, i, oracle[batch->indices[i]], seq_len);
      }
    }
  }
}

TEST(TokenReader, LossMaskMarksOnlyMarkedTargetsAndNeverEndOfDocument) {
  const std::vector<Shard> shards = TestShards();
  std::vector<std::vector<std::vector<uint8_t>>> masks;
  for (const Shard& shard : shards) {
    masks.emplace_back();
    for (const Document& doc : shard) {
      masks.back().emplace_back();
      for (size_t j = 0; j < doc.size(); ++j) masks.back().back().push_back((doc[j] + j) % 3 == 0);
    }
  }
  const std::string dir = WriteTokens("d", shards, &masks);
  const std::vector<Window> oracle = OracleWindows(shards, 6, &masks);
  auto reader = TokenReader::Open(Options(dir, 6, 4));
  ASSERT_TRUE(reader.ok()) << reader.status();
  for (int step = 0; step < 5; ++step) {
    auto batch = (*reader)->Next();
    ASSERT_TRUE(batch.ok()) << batch.status();
    double sum = 0;
    for (int64_t i = 0; i < 4; ++i) {
      ExpectWindow(*batch, i, oracle[batch->indices[i]], 6);
      for (float m : oracle[batch->indices[i]].target_mask) sum += m;
    }
    EXPECT_EQ(batch->num_targets, static_cast<int64_t>(sum));
  }
}

TEST(TokenReader, ResumesExactlyWithAnotherReplicaCount) {
  const std::vector<Shard> shards = TestShards();
  const std::string dir = WriteTokens("d", shards);
  auto straight = TokenReader::Open(Options(dir, 4, 4));
  ASSERT_TRUE(straight.ok());
  std::vector<std::vector<int64_t>> expected;
  SamplerState after_three;
  for (int step = 0; step < 8; ++step) {
    auto batch = (*straight)->Next();
    ASSERT_TRUE(batch.ok());
    expected.push_back(batch->indices);
    if (step == 2) after_three = batch->state_after;
  }
  std::vector<std::unique_ptr<TokenReader>> replicas;
  for (int r = 0; r < 2; ++r) {
    TokenReaderOptions options = Options(dir, 4, 4);
    options.replica = r;
    options.num_replicas = 2;
    options.start = after_three;
    auto reader = TokenReader::Open(options);
    ASSERT_TRUE(reader.ok()) << reader.status();
    replicas.push_back(std::move(*reader));
  }
  for (int step = 3; step < 8; ++step) {
    auto a = replicas[0]->Next(), b = replicas[1]->Next();
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ((std::vector<int64_t>{a->indices[0], b->indices[0], a->indices[1], b->indices[1]}),
              expected[step]);
  }
}

TEST(TokenReader, TokenOutsideTheVocabularyIsADataErrorNamingFileAndField) {
  for (int32_t bad : {100, 1000, -1}) {
    std::vector<Shard> shards = {{{1, 2, 3}, {4, bad, 6}, {7, 8}}};
    const std::string dir = WriteTokens("d", shards);
    TokenReaderOptions options = Options(dir, 10, 1);
    auto reader = TokenReader::Open(options);
    ASSERT_TRUE(reader.ok()) << reader.status();
    const absl::Status status = (*reader)->Next().status();
    EXPECT_EQ(ExitCodeFor(status), 3) << status;
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("shard-00000.h5: dataset \"tokens\" entry 4 is " + std::to_string(bad)));
    EXPECT_THAT(std::string(status.message()), HasSubstr("vocab_size 100"));
  }
}

TEST(TokenReader, RefusesBadOptionsAndVocabularies) {
  const std::string dir = WriteTokens("d", TestShards());
  EXPECT_EQ(ExitCodeFor(TokenReader::Open(Options(dir, 0, 2)).status()), 2);
  EXPECT_EQ(ExitCodeFor(TokenReader::Open(Options(dir, int64_t{1} << 40, 2)).status()), 2);
  TokenReaderOptions small_vocab = Options(dir, 4, 2);
  small_vocab.vocab_size = 50;
  const absl::Status status = TokenReader::Open(small_vocab).status();
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_THAT(std::string(status.message()), HasSubstr("vocab_size (50)"));
  // No window fits: a data error naming seq_len.
  const absl::Status too_long = TokenReader::Open(Options(dir, 1000, 2)).status();
  EXPECT_EQ(ExitCodeFor(too_long), 3);
  EXPECT_THAT(std::string(too_long.message()), HasSubstr("seq_len + 1 = 1001"));
}

TEST(TokenReader, ManifestNeedsVocabularyEndOfDocumentAndTokenCounts) {
  const std::string dir = FreshDir("raw");
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int64_t> offsets = {0, 3};
  testing_util::WriteRawShard(
      dir + "/s.h5", "tokens", 1,
      {{"tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {3}, tokens.data()},
       {"doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, offsets.data()}});
  auto expect_manifest_error = [&](const std::vector<testing_util::RawShardEntry>& shards,
                                   const std::vector<std::pair<std::string, std::string>>& attrs,
                                   const std::string& message) {
    testing_util::WriteRawManifest(dir, "tokens", shards, attrs);
    const absl::Status status = TokenReader::Open(Options(dir, 2, 1)).status();
    EXPECT_EQ(ExitCodeFor(status), 3) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(message));
  };
  expect_manifest_error({{"s.h5", 1, 3}}, {{"eod_token", "0"}},
                        "attributes[\"vocab_size\"] is missing");
  expect_manifest_error({{"s.h5", 1, 3}}, {{"vocab_size", "10"}},
                        "attributes[\"eod_token\"] is missing");
  expect_manifest_error({{"s.h5", 1, 3}}, {{"vocab_size", "10"}, {"eod_token", "10"}},
                        "eod_token\"] = 10 is outside [0, vocab_size 10)");
  expect_manifest_error({{"s.h5", 1}}, {{"vocab_size", "10"}, {"eod_token", "0"}},
                        "shards[0].num_tokens missing");
  // A token count that disagrees with the shard shows when the shard is opened.
  testing_util::WriteRawManifest(dir, "tokens", {{"s.h5", 1, 2}},
                                 {{"vocab_size", "10"}, {"eod_token", "0"}});
  auto reader = TokenReader::Open(Options(dir, 2, 1));
  ASSERT_TRUE(reader.ok()) << reader.status();
  const absl::Status status = (*reader)->Next().status();
  EXPECT_EQ(ExitCodeFor(status), 3);
  EXPECT_THAT(std::string(status.message()), HasSubstr("holds 3 tokens"));
}

}  // namespace
}  // namespace tessera
