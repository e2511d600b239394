#include "models/mamba_hybrid/evaluation.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "absl/strings/str_format.h"
#include "models/common/eval_reader.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::mamba_hybrid {
namespace {

// The held-out split must speak the training data's language: the same
// vocabulary, end-of-document token and (when both name one) task.
absl::Status CheckAgainstTraining(const RunConfig& config, const TokenReaderOptions& options,
                                  const TokenReader& reader) {
  const std::string& train_dir = config.data().dir();
  TESSERA_ASSIGN_OR_RETURN(const DataManifest train, ReadManifest(train_dir));
  const DataManifest& eval = reader.manifest();
  for (const char* key : {"vocab_size", "eod_token"}) {
    TESSERA_ASSIGN_OR_RETURN(const int64_t want, IntAttribute(train, key, train_dir));
    TESSERA_ASSIGN_OR_RETURN(const int64_t got, IntAttribute(eval, key, options.dir));
    if (got != want) {
      return UsageError(absl::StrFormat(
          "data.eval_dir \"%s\": %s/%s has %s %d, but data.dir \"%s\" has %d: the held-out "
          "split must use the training data's vocabulary",
          options.dir, options.dir, kManifestFile, key, got, train_dir, want));
    }
  }
  const auto train_task = train.attributes().find("task");
  const auto eval_task = eval.attributes().find("task");
  if (train_task != train.attributes().end() && eval_task != eval.attributes().end() &&
      train_task->second != eval_task->second) {
    return UsageError(absl::StrFormat(
        "data.eval_dir \"%s\": %s/%s has task \"%s\", but data.dir \"%s\" has task \"%s\"",
        options.dir, options.dir, kManifestFile, eval_task->second, train_dir,
        train_task->second));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LanguageModelEvaluation>> LanguageModelEvaluation::Create(
    const RunConfig& config, MambaHybrid& model, const TaskOptions& task) {
  TokenReaderOptions options;
  SetEvalReaderOptions(config, task, &options);
  options.seq_len = model.config().seq_len();
  options.vocab_size = model.config().vocab_size();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<TokenReader> reader, TokenReader::Open(options));
  TESSERA_RETURN_IF_ERROR(CheckAgainstTraining(config, options, *reader));
  const int64_t available = reader->num_samples();
  const int64_t wanted = config.train().eval_samples();
  const int64_t samples = wanted > 0 ? std::min(wanted, available) : available;
  return std::unique_ptr<LanguageModelEvaluation>(
      new LanguageModelEvaluation(model, options, std::move(reader), samples));
}

LanguageModelEvaluation::LanguageModelEvaluation(MambaHybrid& model,
                                                 const TokenReaderOptions& options,
                                                 std::unique_ptr<TokenReader> reader,
                                                 int64_t samples)
    : model_(model), options_(options), reader_(std::move(reader)), samples_(samples) {}

absl::StatusOr<std::vector<EvalMetric>> LanguageModelEvaluation::Evaluate(Arena& arena) {
  // Each evaluation reads the split from its start with a fresh reader.
  if (!reader_) {
    TESSERA_ASSIGN_OR_RETURN(reader_, TokenReader::Open(options_));
  }
  const int64_t global = options_.global_batch, seq = options_.seq_len;
  const int replicas = options_.num_replicas;
  // Every rank runs the same number of forwards (model parallelism's
  // collectives need them all); windows past the evaluated ones are padding
  // whose targets are all masked out.
  const int64_t batches = (samples_ + global - 1) / global;
  double nats = 0, targets = 0, correct = 0;
  for (int64_t b = 0; b < batches; ++b) {
    TESSERA_ASSIGN_OR_RETURN(const TokenBatch batch, reader_->Next());
    const int64_t windows = batch.tokens.dim(0);
    LmInputs in;
    in.batch = windows;
    in.seq = seq;
    const int32_t* tokens = batch.tokens.data<int32_t>();
    const float* mask = batch.loss_mask.data<float>();
    for (int64_t k = 0; k < windows; ++k) {
      // This replica's k-th window is entry k * R + replica of the global batch.
      const bool counted = b * global + k * replicas + options_.replica < samples_;
      const int32_t* window = tokens + k * (seq + 1);
      for (int64_t t = 0; t < seq; ++t) {
        in.inputs.push_back(window[t]);
        in.targets.push_back(window[t + 1]);
        in.mask.push_back(counted && mask[k * seq + t] != 0 ? 1 : 0);
      }
    }
    TESSERA_ASSIGN_OR_RETURN(const MambaHybrid::LossSum loss,
                             model_.ForwardLoss(arena, in, /*record=*/false));
    nats += loss.sum;
    targets += static_cast<double>(loss.count);
    correct += static_cast<double>(loss.correct);
    arena.Reset();
  }
  reader_.reset();  // stops its I/O thread between evaluations
  return std::vector<EvalMetric>{{"val_loss", nats, targets},
                                 {"val_bits_per_token", nats / std::log(2.0), targets},
                                 {"val_accuracy", correct, targets}};
}

}  // namespace tessera::mamba_hybrid
