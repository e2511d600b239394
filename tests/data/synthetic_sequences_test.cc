// The synthetic tokens and interactions generators produce what their
// headers promise, checked from the shards by independent rules.
#include <map>
#include <set>
#include <vector>

#include "data/interaction_reader.h"
#include "data/manifest.h"
#include "data/synthetic_interactions.h"
#include "data/synthetic_tokens.h"
#include "data/token_reader.h"
#include "gtest/gtest.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using testing_util::FreshDir;

// Every window of an unshuffled reader, in order: [windows][seq_len + 1] and
// the target masks.
struct AllWindows {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<float>> masks;
};
AllWindows ReadAllWindows(const std::string& dir, int64_t seq_len) {
  TokenReaderOptions options;
  options.dir = dir;
  options.seq_len = seq_len;
  options.global_batch = 1;
  options.shuffle = false;
  auto reader = TokenReader::Open(options);
  EXPECT_TRUE(reader.ok()) << reader.status();
  AllWindows all;
  for (int64_t w = 0; w < (*reader)->num_samples(); ++w) {
    auto batch = (*reader)->Next();
    EXPECT_TRUE(batch.ok()) << batch.status();
    const int32_t* t = batch->tokens.data<int32_t>();
    const float* m = batch->loss_mask.data<float>();
    all.tokens.emplace_back(t, t + seq_len + 1);
    all.masks.emplace_back(m, m + seq_len);
  }
  return all;
}

TEST(SyntheticTokens, MarkovDocumentsFollowAtMostBranchingSuccessorsPerToken) {
  const std::string dir = FreshDir("markov");
  MarkovLanguageSpec spec;
  spec.num_documents = 300;
  spec.vocab_size = 20;
  spec.branching = 3;
  spec.min_length = 5;
  spec.max_length = 40;
  spec.documents_per_shard = 300;  // one stream: document lengths can be counted across windows
  ASSERT_TRUE(SynthesizeMarkovLanguage(dir, spec).ok());
  ASSERT_TRUE(VerifyDataset(dir).ok());
  // seq_len 1: every window is one (token, next) pair of the stream.
  const AllWindows windows = ReadAllWindows(dir, 1);
  std::map<int32_t, std::set<int32_t>> successors;
  int64_t documents = 0, length = 0;
  for (const auto& w : windows.tokens) {
    ASSERT_LT(w[0], 20);
    if (w[0] == 19) {
      ++documents;
      EXPECT_TRUE(length >= 5 && length <= 40) << length;
      length = 0;
      continue;
    }
    ++length;
    if (w[1] != 19) successors[w[0]].insert(w[1]);
  }
  EXPECT_EQ(documents, 300 - 1);  // the last end-of-document starts no window
  for (const auto& [token, next] : successors) EXPECT_EQ(next.size(), 3u) << token;
}

TEST(SyntheticTokens, AssociativeRecallAnswersFollowTheirKeysAndAreTheOnlyTargets) {
  const std::string dir = FreshDir("recall");
  AssociativeRecallSpec spec;
  spec.num_documents = 40;
  spec.pairs = 6;
  spec.queries = 4;
  spec.num_keys = 10;
  spec.num_values = 7;
  spec.documents_per_shard = 40;
  ASSERT_TRUE(SynthesizeAssociativeRecall(dir, spec).ok());
  ASSERT_TRUE(VerifyDataset(dir).ok());
  auto manifest = ReadManifest(dir);
  ASSERT_TRUE(manifest.ok());
  EXPECT_EQ(manifest->attributes().at("seq_len"), "21");
  EXPECT_EQ(manifest->attributes().at("vocab_size"), "18");
  const AllWindows windows = ReadAllWindows(dir, 21);
  ASSERT_EQ(windows.tokens.size(), 40u - 1);  // the last document has no following token
  for (size_t w = 0; w < windows.tokens.size(); ++w) {
    const std::vector<int32_t>& t = windows.tokens[w];
    std::map<int32_t, int32_t> bound;
    for (int p = 0; p < 6; ++p) {
      ASSERT_LT(t[2 * p], 10);
      ASSERT_GE(t[2 * p + 1], 10);
      ASSERT_LT(t[2 * p + 1], 17);
      EXPECT_TRUE(bound.emplace(t[2 * p], t[2 * p + 1]).second) << "keys repeat";
    }
    std::set<int32_t> asked;
    for (int q = 0; q < 4; ++q) {
      const int32_t key = t[12 + 2 * q], answer = t[13 + 2 * q];
      ASSERT_TRUE(bound.count(key));
      EXPECT_EQ(answer, bound[key]);
      EXPECT_TRUE(asked.insert(key).second) << "queries repeat";
    }
    EXPECT_EQ(t[20], 17);  // end of document
    for (int j = 0; j < 21; ++j) {
      const bool answer = j + 1 >= 13 && j + 1 <= 19 && (j + 1 - 13) % 2 == 0;
      EXPECT_EQ(windows.masks[w][j], answer ? 1.0f : 0.0f) << "window " << w << " target " << j;
    }
  }
}

TEST(SyntheticInteractions, UsersMostlyFollowTheirClusterWithOrderedTimestamps) {
  const std::string dir = FreshDir("clusters");
  ClusteredInteractionsSpec spec;
  spec.num_users = 200;
  spec.num_items = 60;
  spec.num_clusters = 6;
  spec.min_length = 3;
  spec.max_length = 30;
  spec.users_per_shard = 64;
  ASSERT_TRUE(SynthesizeInteractions(dir, spec).ok());
  ASSERT_TRUE(VerifyDataset(dir).ok());
  InteractionReaderOptions options;
  options.dir = dir;
  options.global_batch = 200;
  options.shuffle = false;
  auto reader = InteractionReader::Open(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto batch = (*reader)->Next();
  ASSERT_TRUE(batch.ok()) << batch.status();
  const int64_t* offsets = batch->offsets.data<int64_t>();
  const int64_t* items = batch->item_ids.data<int64_t>();
  const int64_t* times = batch->timestamps.data<int64_t>();
  int64_t moves = 0, follows = 0;
  for (int64_t u = 0; u < 200; ++u) {
    EXPECT_EQ(batch->user_ids.data<int64_t>()[u], u);
    const int64_t length = offsets[u + 1] - offsets[u];
    EXPECT_TRUE(length >= 3 && length <= 30);
    for (int64_t e = offsets[u] + 1; e < offsets[u + 1]; ++e) {
      EXPECT_GT(times[e], times[e - 1]);
      ++moves;
      // The next item of the previous one's cluster cycle (items c, c+6, c+12, …).
      follows += items[e] == (items[e - 1] + 6 < 60 ? items[e - 1] + 6 : items[e - 1] % 6);
    }
  }
  const double rate = static_cast<double>(follows) / static_cast<double>(moves);
  // 0.85 planted, counted only after a cluster event (0.9 of them): 0.765,
  // plus what chance adds (about 1/60).
  EXPECT_GT(rate, 0.72);
  EXPECT_LT(rate, 0.82);
}

}  // namespace
}  // namespace tessera
