// The Mamba hybrid's evaluation (models/mamba_hybrid/evaluation.h) against a
// direct computation on one process: the held-out windows read whole, the
// generation path's hidden states and logits (ForwardHidden, Logits), the
// cross-entropy in double and the first argmax at every masked position.
// Also: padding in the last evaluation batch counts for nothing, two
// data-parallel replicas' shares add up to the whole, train.eval_samples
// takes the first windows, and held-out data of another vocabulary or task
// is refused naming data.eval_dir.
#include "models/mamba_hybrid/evaluation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "data/synthetic_tokens.h"
#include "models/mamba_hybrid/family.h"
#include "tests/data/test_util.h"

namespace tessera::mamba_hybrid {
namespace {

// Recall documents of 4 pairs and 3 queries (14 tokens): vocabulary 8 keys +
// 7 values + end of document = 16; windows of 15 align with the documents.
AssociativeRecallSpec Spec(int64_t documents, uint64_t seed) {
  AssociativeRecallSpec spec;
  spec.num_documents = documents;
  spec.pairs = 4;
  spec.queries = 3;
  spec.num_keys = 8;
  spec.num_values = 7;
  spec.seed = seed;
  return spec;
}

// Folders of the running test only: CTest runs this file's tests as
// concurrent processes, and a folder shared between tests raced (one test's
// SetUp removed another's data).
std::string Dir(const std::string& name) { return testing_util::FreshDir(name); }

RunConfig Config(const std::string& train, const std::string& eval) {
  RunConfig config;
  MambaHybridConfig& c = *config.mutable_mamba_hybrid();
  c.set_vocab_size(16);
  c.set_hidden_size(16);
  c.set_num_layers(4);
  c.set_pattern("M*-M");
  c.set_state_dim(8);
  c.set_head_dim(8);
  c.set_num_groups(2);
  c.set_expand(2);
  c.set_conv_width(4);
  c.set_chunk_size(4);
  c.set_num_heads(4);
  c.set_num_query_groups(2);
  c.set_ffn_hidden_size(24);
  c.set_seq_len(15);
  config.mutable_data()->set_dir(train);
  config.mutable_data()->set_eval_dir(eval);
  config.mutable_data()->set_prefetch(2);
  config.mutable_train()->set_seed(5);
  return config;
}

struct Direct {
  double nats = 0, targets = 0, correct = 0;
};

// The first `windows` windows of `dir`, computed position by position.
Direct Compute(MambaHybridModel& built, const std::string& dir, int64_t windows) {
  MambaHybrid& model = built.model();
  const int64_t seq = model.config().seq_len(), vocab = model.config().vocab_size();
  TokenReaderOptions options;
  options.dir = dir;
  options.global_batch = windows;
  options.shuffle = false;
  options.seq_len = seq;
  options.vocab_size = vocab;
  auto reader = TokenReader::Open(options);
  EXPECT_TRUE(reader.ok()) << reader.status();
  const TokenBatch batch = *(*reader)->Next();
  for (int64_t k = 0; k < windows; ++k) EXPECT_EQ(batch.indices[k], k);
  Tensor ids = Tensor::Empty(DType::kI32, Shape{windows * seq});
  for (int64_t k = 0; k < windows; ++k) {
    std::memcpy(ids.data<int32_t>() + k * seq, batch.tokens.data<int32_t>() + k * (seq + 1),
                seq * sizeof(int32_t));
  }
  Arena arena;
  const Tensor logits =
      model.Logits(arena, *model.ForwardHidden(arena, ids, windows, seq, /*record=*/false));
  Direct d;
  for (int64_t k = 0; k < windows; ++k) {
    for (int64_t t = 0; t < seq; ++t) {
      if (batch.loss_mask.data<float>()[k * seq + t] == 0) continue;
      const int32_t target = batch.tokens.data<int32_t>()[k * (seq + 1) + t + 1];
      const float* row = logits.data<float>() + (k * seq + t) * vocab;
      int64_t argmax = 0;
      for (int64_t v = 1; v < vocab; ++v) {
        if (row[v] > row[argmax]) argmax = v;
      }
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - row[argmax]);
      d.nats += std::log(sum) + row[argmax] - row[target];
      d.targets += 1;
      d.correct += argmax == target;
    }
  }
  return d;
}

class EvaluationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    train_ = Dir("train");
    eval_ = Dir("eval");
    ASSERT_TRUE(SynthesizeAssociativeRecall(train_, Spec(16, 1)).ok());
    // 11 documents: 10 windows of 15 (the stream's last token starts none).
    ASSERT_TRUE(SynthesizeAssociativeRecall(eval_, Spec(11, 2)).ok());
    config_ = Config(train_, eval_);
    auto built = MambaHybridModel::Build(config_);
    ASSERT_TRUE(built.ok()) << built.status();
    model_ = std::move(*built);
  }

  // The evaluation of replica `replica` of `replicas`, forwards of `micro` windows.
  std::vector<EvalMetric> Evaluate(int replica, int replicas, int64_t micro) {
    TaskOptions options;
    options.replica = replica;
    options.num_replicas = replicas;
    options.micro_batch = micro;
    auto eval = model_->CreateEvalTask(options);
    EXPECT_TRUE(eval.ok()) << eval.status();
    Arena arena;
    auto metrics = (*eval)->Evaluate(arena);
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return *metrics;
  }

  std::string train_, eval_;
  RunConfig config_;
  std::unique_ptr<MambaHybridModel> model_;
};

void ExpectMatches(const std::vector<EvalMetric>& got, const Direct& want) {
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].name, "val_loss");
  EXPECT_EQ(got[1].name, "val_bits_per_token");
  EXPECT_EQ(got[2].name, "val_accuracy");
  for (const EvalMetric& m : got) EXPECT_EQ(m.count, want.targets) << m.name;
  EXPECT_NEAR(got[0].sum, want.nats, 1e-5 * want.nats);
  EXPECT_NEAR(got[1].sum, want.nats / std::log(2.0), 1e-5 * want.nats);
  EXPECT_EQ(got[2].sum, want.correct);
}

TEST_F(EvaluationTest, EqualsTheDirectComputationWithAPaddedLastBatch) {
  const Direct want = Compute(*model_, eval_, 10);
  EXPECT_EQ(want.targets, 30);  // 3 answers in each of the 10 windows
  // 10 windows in forwards of 3: the last forward holds 1 window and 2 of padding.
  const std::vector<EvalMetric> got = Evaluate(0, 1, 3);
  ExpectMatches(got, want);
  // Untrained weights predict some answers and miss others: the count is informative.
  EXPECT_GT(want.correct, 0);
  EXPECT_LT(want.correct, want.targets);
  // A second evaluation reads the split from its start again.
  ExpectMatches(Evaluate(0, 1, 3), want);
}

TEST_F(EvaluationTest, ReplicaSharesAddUpToTheWhole) {
  const Direct want = Compute(*model_, eval_, 10);
  // Two replicas with forwards of 2: 3 global batches of 4, the last half padding.
  const std::vector<EvalMetric> first = Evaluate(0, 2, 2), second = Evaluate(1, 2, 2);
  ASSERT_EQ(first.size(), 3u);
  ASSERT_EQ(second.size(), 3u);
  EXPECT_GT(first[0].count, 0);
  EXPECT_GT(second[0].count, 0);
  std::vector<EvalMetric> sum = first;
  for (size_t i = 0; i < sum.size(); ++i) {
    sum[i].sum += second[i].sum;
    sum[i].count += second[i].count;
  }
  ExpectMatches(sum, want);
}

TEST_F(EvaluationTest, EvalSamplesTakesTheFirstWindows) {
  config_.mutable_train()->set_eval_samples(4);
  auto built = MambaHybridModel::Build(config_);
  ASSERT_TRUE(built.ok());
  model_ = std::move(*built);
  TaskOptions options;
  options.micro_batch = 3;
  auto eval = model_->CreateEvalTask(options);
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ((*eval)->num_samples(), 4);
  Arena arena;
  ExpectMatches(*(*eval)->Evaluate(arena), Compute(*model_, eval_, 4));
}

TEST_F(EvaluationTest, RefusesAnotherVocabularyOrTask) {
  // 9 keys: vocabulary 17, end of document 16 (the model's 16 is too small).
  AssociativeRecallSpec wider = Spec(11, 2);
  wider.num_keys = 9;
  const std::string other = Dir("wider");
  ASSERT_TRUE(SynthesizeAssociativeRecall(other, wider).ok());
  config_.mutable_data()->set_eval_dir(other);
  auto built = MambaHybridModel::Build(config_);
  ASSERT_TRUE(built.ok());
  auto eval = (*built)->CreateEvalTask(TaskOptions{});
  ASSERT_FALSE(eval.ok());
  EXPECT_NE(eval.status().message().find("is smaller than data.eval_dir"), std::string::npos)
      << eval.status();

  // 6 values: vocabulary 15 fits the model but is not the training data's.
  AssociativeRecallSpec narrower = Spec(11, 2);
  narrower.num_values = 6;
  const std::string smaller = Dir("narrower");
  ASSERT_TRUE(SynthesizeAssociativeRecall(smaller, narrower).ok());
  config_.mutable_data()->set_eval_dir(smaller);
  built = MambaHybridModel::Build(config_);
  ASSERT_TRUE(built.ok());
  eval = (*built)->CreateEvalTask(TaskOptions{});
  ASSERT_FALSE(eval.ok());
  EXPECT_NE(eval.status().message().find("data.eval_dir \"" + smaller + "\""), std::string::npos)
      << eval.status();
  EXPECT_NE(eval.status().message().find("has vocab_size 15, but data.dir"), std::string::npos)
      << eval.status();

  // A Markov language of the same vocabulary: another task.
  MarkovLanguageSpec markov;
  markov.num_documents = 8;
  markov.vocab_size = 16;
  const std::string language = Dir("markov");
  ASSERT_TRUE(SynthesizeMarkovLanguage(language, markov).ok());
  config_.mutable_data()->set_eval_dir(language);
  built = MambaHybridModel::Build(config_);
  ASSERT_TRUE(built.ok());
  eval = (*built)->CreateEvalTask(TaskOptions{});
  ASSERT_FALSE(eval.ok());
  EXPECT_NE(eval.status().message().find("has task \"markov\", but data.dir"), std::string::npos)
      << eval.status();
}

}  // namespace
}  // namespace tessera::mamba_hybrid
