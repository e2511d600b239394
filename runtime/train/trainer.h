// The step loop: micro-batches with gradient accumulation, global grad-norm
// clipping, the learning-rate schedule, AdamW, EMA, NaN/Inf detection, and
// what each step reports (log line, metrics.jsonl, progress bar).
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "runtime/checkpoint/host_group.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/parameter.h"
#include "runtime/optim/ema.h"
#include "runtime/train/checkpointing.h"
#include "runtime/train/eval_task.h"
#include "runtime/train/gradient_sync.h"
#include "runtime/train/sparse_parameters.h"
#include "runtime/train/train_task.h"

namespace tessera {

// Memory the runtime expects to hold, predicted before the first step.
struct MemoryPlan {
  // `baseline`: the process before the model existed (code, libraries, the
  // data reader), measured; the rest predicted from shapes.
  size_t baseline = 0, parameters = 0, gradients = 0, optimizer = 0, ema = 0, activations = 0;
  size_t communication = 0;  // reduction buffers besides the gradients (ZeRO-1 shards)
  size_t checkpoint = 0;     // the host snapshot saves copy into (kept between saves)
  // A bf16 run's copy of the weights (ParameterStore::ScopedBf16Values, 2
  // bytes per parameter) while a step runs; 0 in an fp32 run. The rounded
  // activation copies are in `activations` (the model's plan counts them).
  size_t bf16_weights = 0;
  size_t total() const {
    return baseline + parameters + gradients + optimizer + ema + activations + communication +
           checkpoint + bf16_weights;
  }
};

struct TrainSummary {
  int64_t steps = 0;     // optimizer steps this process ran (fewer than the last step after a resume)
  int64_t samples = 0;   // samples those steps trained on, over all replicas (global_batch each)
  double first_loss = 0, last_loss = 0;
  double mean_samples_per_s = 0;
  double peak_fraction = 0;  // achieved FLOP/s over the same-run GEMM peak
  size_t peak_rss_bytes = 0;
  MemoryPlan plan;
};

class Trainer {
 public:
  struct Options {
    int micro_batches = 1;    // per optimizer step on this process
    size_t baseline_rss = 0;  // resident bytes before the model was built (0: unknown)
    double gemm_peak = 0;     // FLOP/s reference; 0: measure at the start of Run()
    // Data parallelism; null: this process alone (LocalGradientSync).
    GradientSync* sync = nullptr;
    // Test-only fault injection for this process (fault.* in the config,
    // resolved for this rank by launch/).
    struct Fault {
      enum class Action { kNone, kKill, kHang };
      Action action = Action::kNone;
      int64_t step = -1;
      std::string phase = "forward";
      int64_t corrupt_step = -1;  // corrupt a piece of this step's checkpoint
    } fault;
    // Checkpoints (checkpoint.* in the config; docs/checkpoints.md).
    HostGroup* group = nullptr;        // the ranks that commit together; null: this process
    HostGroup* async_group = nullptr;  // a second group for background saves; null: none
    CheckpointMesh mesh;               // recorded in the manifest
    int tp_rank = 0;                   // this rank's tp coordinate
    std::string resume_dir;            // continue from this committed checkpoint
    std::string init_dir;              // checkpoint.load: initial parameters only
    // The model's evaluation on data.eval_dir, run every train.eval_every
    // steps and after the last; null: none.
    EvalTask* eval = nullptr;
    // The model's parameters outside the store (a row-sharded table with
    // its sparse optimizer), stepped after the dense step and checkpointed
    // with it; null: none.
    SparseParameters* sparse = nullptr;
  };
  Trainer(const RunConfig& config, ParameterStore& store, TrainTask& task,
          const Options& options);
  ~Trainer();  // waits for a background save

  // Trains up to config.train.steps steps (from the step after a resumed
  // checkpoint). Writes <run_dir>/metrics.jsonl and, every checkpoint.every
  // steps, a checkpoint. Returns a NumericalError if the loss or the
  // gradients stop being finite, and SavedForRequeue (exit 75) after saving
  // when SIGTERM/SIGUSR1 asked it to stop.
  absl::Status Run();

  const TrainSummary& summary() const { return summary_; }
  // The time the remaining steps should take, estimated after each step from
  // the steps this process ran (the progress bar shows it).
  double eta_seconds() const { return eta_seconds_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  // The EMA of the weights (or the weights themselves when EMA is off).
  const float* inference_weights() const;

  // Measures the fp32 GEMM rate (FLOP/s) of `backend` (the run's device): the
  // reference that peak_fraction is reported against.
  // FLOP/s of an n x n x n GEMM on `backend` at its current precision (the
  // fastest of 10), n = GemmPeakSize(backend).
  static double MeasureGemmPeak(Backend& backend = HostBackend());
  static int64_t GemmPeakSize(const Backend& backend);

 private:
  // Run(), step by step.
  absl::Status CreateRunDirectory() const;
  // Restores a checkpoint (resume or init) and returns the first step to run.
  absl::StatusOr<int64_t> RestoreOrInitialize();
  absl::Status OpenMetrics(int64_t first_step);
  // The training FLOPs of one sample of the global batch, whatever the
  // layout: the sum over the ranks of TrainTask::TrainingFlopsPerSample
  // (each rank's share) over the data-parallel size. Collective.
  absl::StatusOr<double> JobFlopsPerSample();
  void PrintMemoryPlan() const;
  absl::Status TrainSteps(int64_t first_step);
  // A checkpoint after `step` when one is due or a stop was agreed; then, for
  // a stop, SavedForRequeue.
  absl::Status SaveIfDue(int64_t step, bool stop);
  absl::Status FinishRun(absl::Status status, int64_t first_step);

  absl::Status Step(int64_t step);
  // Whether `step` writes a log line (train.log_every, the first and the
  // last step); the same on every rank.
  bool IsLogStep(int64_t step) const;
  // The step boundary without a full wait: records the step's end event and
  // waits for the previous step's (the host runs at most one step ahead of
  // the device), then reports asynchronous device errors without waiting.
  absl::Status EndStepOnDevice();
  // Reads the last queued step's device scalars (at a log step, a save, an
  // evaluation and the run's end): its loss and auxiliary loss over the
  // replicas and its gradient norm into loss_, aux_ and grad_norm_, and a
  // NumericalError naming the first step that diverged, if one did.
  // Collective over the replicas; nothing when that step was read already.
  absl::Status ReadStep();
  // The evaluation after `step` when one is due (train.eval_every, the last step).
  absl::Status EvaluateIfDue(int64_t step);
  // Runs options_.eval with the inference weights in the parameters, sums
  // its metrics over the replicas and reports them (log line, metrics.jsonl).
  absl::Status Evaluate(int64_t step);
  // Exchanges the parameters with the EMA in place (no-op without EMA):
  // twice restores both.
  void SwapParametersWithEma();
  absl::Status ReportEval(int64_t step, const std::vector<EvalMetric>& metrics, double seconds);
  // Early stopping (train.early_stop_*): notes the watched metric of the
  // evaluation after `step` and agrees over the ranks whether the run stops
  // (the logging rank decides: after a resume only it has replayed the
  // evaluations before, from metrics.jsonl).
  absl::Status TrackEarlyStop(int64_t step, const std::vector<EvalMetric>& metrics);
  void NoteWatchedMetric(int64_t step, double value);
  // The evaluations metrics.jsonl holds (a resumed run's, up to its step).
  void ReplayEarlyStop(const std::string& metrics_path);
  // Saves a checkpoint of `step`, restores the best step's (RestoreBest),
  // writes <run_dir>/early_stop.json, says so.
  absl::Status StopEarly(int64_t step);
  // With train.early_stop_restore_best, loads the best step's checkpoint
  // (parameters, EMA, optimizer, sparse tables) on every rank and returns
  // its directory; empty when the run keeps the weights of `step`.
  absl::StatusOr<std::string> RestoreBest(int64_t step);
  // Loads `dir` into the parameters (and EMA and optimizer unless
  // `parameters_only`) on every rank; fails everywhere if it fails anywhere.
  // Returns the checkpoint's step.
  absl::StatusOr<int64_t> Restore(const std::string& dir, bool parameters_only);
  // Whether any rank received a stop signal (agreed over the group).
  absl::StatusOr<bool> AgreeOnStop();
  absl::Status SupersedeNewer(int64_t step);
  // Saves after `step`: in the background with checkpoint.async (unless
  // `blocking`), else before returning.
  absl::Status Save(int64_t step, bool blocking);
  absl::Status WaitForSave();
  // The checkpointed buffers as host memory (host copies on a device,
  // copied from it when `refresh`).
  TrainingState HostState(bool refresh);
  void MaybeInjectFault(int64_t step, const char* phase) const;
  // Logs the step (line, metrics.jsonl, progress bar); a failed metrics
  // write is an error.
  // Reports the values of the last read step (loss_, aux_, grad_norm_): at a
  // log step that is `step` itself.
  absl::Status Report(int64_t step, double lr, double step_seconds, int64_t samples);

  const RunConfig& config_;
  ParameterStore& store_;
  TrainTask& task_;
  Options options_;
  std::unique_ptr<LocalGradientSync> local_sync_;
  GradientSync* sync_;
  std::unique_ptr<Ema> ema_;
  Tensor swap_buffer_;  // SwapParametersWithEma's staging, allocated on first use
  LocalHostGroup local_group_;
  HostGroup* group_;
  std::thread saver_;  // at most one background save in flight
  std::unique_ptr<CheckpointSnapshot> snapshot_;  // reused by every save
  HostStateMirror mirror_;                         // host copies of device buffers
  const CheckpointSnapshot* saving_ = nullptr;     // what the background save writes
  absl::Status save_status_;
  int64_t last_saved_step_ = -1;
  // Early stopping: the best value of the watched metric, its step, the
  // evaluations since, and whether the run stops now.
  double best_value_ = 0;
  int64_t best_step_ = -1;  // -1: no finite value yet
  int64_t evals_since_best_ = 0;
  bool stop_early_ = false;
  int64_t current_step_ = 0;
  Arena arena_;
  // The step's scalars in the store's backend memory, which the host reads
  // only at ReadStep (docs/cuda.md): doubles, held in an i64 tensor —
  // [kNormSquared] the global squared gradient norm, [kDivergedStep] the
  // first step whose loss or gradient norm was not finite (0: none; from
  // then on every update is skipped), [kLosses + 2m] micro-batch m's loss
  // and [kLosses + 2m + 1] the auxiliary losses its task left on the device —
  // and the float clip scale Backend::StepGuard leaves for the optimizer
  // and the EMA (0: skip).
  static constexpr int kNormSquared = 0, kDivergedStep = 1, kLosses = 2;
  Tensor step_scalars_;
  Tensor grad_scale_;
  double* StepScalar(int index) {
    return reinterpret_cast<double*>(step_scalars_.ptr<int64_t>()) + index;
  }
  // What the host knows of the last step it queued without reading the
  // device: each micro-batch's elements and loss divisor, and the
  // auxiliary losses' sum (host values).
  struct QueuedStep {
    int64_t step = 0;  // 0: none, or already read
    std::vector<double> elements, divisors;
    double aux_sum = 0;
  };
  QueuedStep queued_;
  // The last read step's values.
  double loss_ = 0, aux_ = 0, grad_norm_ = 0;
  // Step-end events, used in turn: the host waits for the one before.
  std::unique_ptr<Event> step_end_[2];
  int64_t step_ends_ = 0;
  MemoryPlan plan_;
  TrainSummary summary_;
  double gemm_peak_ = 0;
  double flops_per_sample_ = 0;  // JobFlopsPerSample()
  double sparse_step_seconds_ = 0;  // the last step's options_.sparse->Step
  std::FILE* metrics_ = nullptr;
  bool progress_ = false;
  // Accumulated between log lines.
  double window_seconds_ = 0;
  int64_t window_samples_ = 0;
  // Over the steps this process ran but its first (which pays one-time
  // costs), unless that is its only one: throughput and the ETA.
  int64_t first_step_ = 1;
  double total_seconds_ = 0;
  int64_t total_samples_ = 0;
  int64_t timed_steps_ = 0;
  double eta_seconds_ = 0;
};

}  // namespace tessera
