// EvalTask: a model's evaluation on a held-out split (data.eval_dir), which
// the trainer runs every train.eval_every steps and after the last step.
//
// runtime/train knows no model: a model's evaluation (e.g.
// models/dit_moe/evaluation.h) reads its split through the reader interface
// of data/batch_reader.h, runs forward passes with the weights the trainer
// put in the parameters (the inference weights: the EMA when there is one)
// and returns named metrics as sums and counts. The trainer sums both over
// the ranks it sums the training loss over (every data-parallel replica and
// sequence shard), so each metric is sum / count over the whole split under
// any layout; a rank that shares its samples with others (sp, Megatron SP)
// returns its share, as its training loss does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tensor/arena.h"

namespace tessera {

// One metric of an evaluation on this rank: the metric is sum / count once
// both are summed over the replicas (a mean loss: the per-sample loss sum
// and the samples; a hit rate: hits and users; bits per byte: bits and bytes).
struct EvalMetric {
  std::string name;  // the metrics.jsonl field, e.g. "val_loss"
  double sum = 0;
  double count = 0;
};

class EvalTask {
 public:
  virtual ~EvalTask() = default;

  // One pass over the evaluation set with the model's current parameters.
  // Every rank calls it at the same step (the forward passes of model
  // parallelism are collectives). Activations come from `arena`, which the
  // caller resets afterwards.
  virtual absl::StatusOr<std::vector<EvalMetric>> Evaluate(Arena& arena) = 0;
  // The samples one pass covers over all replicas (for the log line).
  virtual int64_t num_samples() const = 0;
  // The names Evaluate returns, known before the first evaluation (checks
  // train.early_stop_metric before training); empty: not known in advance.
  virtual std::vector<std::string> metric_names() const { return {}; }
};

}  // namespace tessera
