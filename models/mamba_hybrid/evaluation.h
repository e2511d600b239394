// The Mamba hybrid's evaluation (runtime/train/eval_task.h): the held-out
// language-model loss on data.eval_dir.
//
// The first train.eval_samples windows of the split (all when 0), read in
// index order (window w of the tokens reader, data/token_reader.h), through
// the training forward pass (ForwardLoss without recording: any layout of
// dp, tp with the vocab-parallel head, Megatron SP and sp) with the weights
// the trainer puts in the parameters (the EMA when there is one). Over the
// target tokens the split's loss mask selects (every token of plain text;
// the answers of associative recall) it reports
//   val_loss            the mean cross-entropy in nats,
//   val_bits_per_token  the same in bits (bits per byte for a byte vocabulary),
//   val_accuracy        the share whose argmax over the vocabulary is the target,
// each as a sum and a count of target tokens that the trainer adds up over
// the replicas and sequence shards, so the numbers are the same under every
// layout (to float rounding in the forward pass).
#pragma once

#include <memory>
#include <vector>

#include "data/token_reader.h"
#include "models/mamba_hybrid/model.h"
#include "models/registry.h"
#include "runtime/train/eval_task.h"

namespace tessera::mamba_hybrid {

class LanguageModelEvaluation : public EvalTask {
 public:
  // Opens data.eval_dir for `options.replica` of `options.num_replicas`
  // (forwards of options.micro_batch windows) and checks it against the
  // training data (vocab_size, eod_token and task attributes of the tokens
  // manifests) and the model (model.mamba_hybrid.vocab_size).
  static absl::StatusOr<std::unique_ptr<LanguageModelEvaluation>> Create(
      const RunConfig& config, MambaHybrid& model, const TaskOptions& options);

  // {"val_loss": nats, targets}, {"val_bits_per_token": bits, targets},
  // {"val_accuracy": correct targets, targets}: this rank's share.
  absl::StatusOr<std::vector<EvalMetric>> Evaluate(Arena& arena) override;
  int64_t num_samples() const override { return samples_; }  // windows
  std::vector<std::string> metric_names() const override {
    return {"val_loss", "val_bits_per_token", "val_accuracy"};
  }

 private:
  LanguageModelEvaluation(MambaHybrid& model, const TokenReaderOptions& options,
                          std::unique_ptr<TokenReader> reader, int64_t samples);

  MambaHybrid& model_;
  TokenReaderOptions options_;
  std::unique_ptr<TokenReader> reader_;  // open between evaluations only before the first
  int64_t samples_ = 0;
};

}  // namespace tessera::mamba_hybrid
