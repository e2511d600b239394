// TrainTask: what the step loop needs from a model + its data + its objective.
//
// runtime/train knows nothing of models or data formats; a model's task
// (e.g. models/dit_moe/task.h) fetches its micro-batches, runs forward and
// backward, and reports the numbers the loop logs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "runtime/tensor/arena.h"
#include "runtime/train/step_recorder.h"

namespace tessera {

struct MicroBatchResult {
  // The objective's loss, the mean over `elements`, is the double the task
  // wrote to RunMicroBatch's `loss` (device memory, which the trainer reads
  // only at log steps, saves and the run's end) divided by this host value:
  // 1 when the task writes the mean, the element count when it writes the
  // sum (0 elements: 1; the sum is then 0).
  double loss_divisor = 1;
  // Auxiliary losses included in the gradient (e.g. MoE balance) that are
  // host values already; those computed on the device go to loss[1] instead
  // (RunMicroBatch). The step's auxiliary loss is the sum of both.
  double aux_loss = 0;
  int64_t samples = 0;
  // The elements `loss` averages over (images: samples; a language model:
  // target tokens; HSTU: supervised positions). The trainer weights each
  // micro-batch of every replica by it, so the step's loss and gradient are
  // the mean over the global batch's elements under any layout.
  double elements = 0;
};

class TrainTask {
 public:
  virtual ~TrainTask() = default;

  // Forward and backward of micro-batch `micro` of optimizer step `step`,
  // accumulating the parameter gradients of loss_scale * elements * loss
  // (the sum of the per-element losses, auxiliary losses weighted the same
  // way); the trainer divides by the global batch's elements once they are
  // known. Activations come from `arena`, which the caller resets between
  // micro-batches. `loss` is two doubles in the arena's backend memory,
  // written without the host waiting for them: loss[0] the objective's loss
  // (see MicroBatchResult::loss_divisor), and loss[1], 0 on entry, to which
  // the task adds the auxiliary losses it computes on the device (the mean
  // per element, as MicroBatchResult::aux_loss).
  virtual absl::StatusOr<MicroBatchResult> RunMicroBatch(Arena& arena, int64_t step, int micro,
                                                         float loss_scale, double* loss) = 0;

  // Training FLOPs (forward + backward) this rank computes for one sample
  // of its replica's batch: under tp its columns and heads, under sp its
  // tokens, so that the ranks of one replica add up to the whole sample (the
  // trainer sums them over the job; one process: the whole sample). And
  // tokens per sample.
  virtual double TrainingFlopsPerSample() const = 0;
  virtual int64_t TokensPerSample() const = 0;
  // Bytes of activations one micro-batch keeps alive at its peak, and the
  // part of them that lives in the caller's step arena (which the caller
  // allocates up front).
  virtual size_t PredictActivationBytes() const = 0;
  virtual size_t PredictStepArenaBytes() const { return PredictActivationBytes(); }

  // Per-model fields for metrics.jsonl as `"name":value` pairs joined by
  // commas (may be empty), and a short suffix for the log line; both about
  // the last optimizer step.
  virtual std::string MetricsJsonFields() const { return ""; }
  virtual std::string LogSuffix() const { return ""; }
  // Called once per optimizer step after the last micro-batch.
  virtual void EndStep() {}
  // The data stream's position after the last step, for checkpoints: the
  // sampler's epoch and its position in global samples within that epoch.
  virtual std::pair<int64_t, int64_t> DataPosition() const { return {0, 0}; }

  // The numerics dump (tessera debug dump-step): a task that returns true
  // records, while a recorder is set, every input of its micro-batches
  // (random draws included) and their outputs, under global names and
  // shapes (runtime/train/step_recorder.h, docs/debugging.md).
  virtual bool RecordsSteps() const { return false; }
  void set_step_recorder(StepRecorder* recorder) { recorder_ = recorder; }

  // Called between each micro-batch's forward and backward pass (the
  // trainer's test-only fault injection at phase "backward").
  void set_backward_hook(std::function<void()> hook) { backward_hook_ = std::move(hook); }

 protected:
  void BeforeBackward() const {
    if (backward_hook_) backward_hook_();
  }
  StepRecorder* step_recorder() const { return recorder_; }

 private:
  std::function<void()> backward_hook_;
  StepRecorder* recorder_ = nullptr;
};

}  // namespace tessera
