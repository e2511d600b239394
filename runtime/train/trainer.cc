#include "runtime/train/trainer.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"
#include "runtime/base/human_units.h"
#include "runtime/checkpoint/manifest_checks.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/optim/schedule.h"
#include "runtime/config/config.h"
#include "runtime/train/checkpointing.h"
#include "runtime/train/memory.h"
#include "runtime/train/signals.h"

namespace tessera {
namespace {
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Keeps the lines of metrics.jsonl with "step" <= last_step.
absl::Status TrimMetrics(const std::string& path, int64_t last_step) {
  std::FILE* in = std::fopen(path.c_str(), "r");
  if (in == nullptr) return absl::OkStatus();  // nothing logged yet
  std::string kept, line;
  char buffer[4096];
  while (std::fgets(buffer, sizeof(buffer), in) != nullptr) {
    line += buffer;
    if (line.back() != '\n' && !std::feof(in)) continue;
    long long step = 0;
    if (std::sscanf(line.c_str(), "{\"step\":%lld", &step) == 1 && step <= last_step) kept += line;
    line.clear();
  }
  std::fclose(in);
  const std::string temporary = path + ".tmp";
  std::FILE* out = std::fopen(temporary.c_str(), "w");
  if (out == nullptr || std::fwrite(kept.data(), 1, kept.size(), out) != kept.size() ||
      std::fclose(out) != 0 || std::rename(temporary.c_str(), path.c_str()) != 0) {
    return UsageError(absl::StrCat("cannot rewrite ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}
}  // namespace

int64_t Trainer::GemmPeakSize(const Backend& backend) {
  // A GPU needs a far larger product than a CPU to reach its rate (an n = 1024
  // product is a few microseconds on a Hopper, under the launch overhead).
  return backend.host_accessible() ? 1024 : 8192;
}

double Trainer::MeasureGemmPeak(Backend& backend) {
  const int64_t n = GemmPeakSize(backend);
  Tensor a = Tensor::Empty(DType::kF32, Shape{n, n}, backend);
  Tensor b = Tensor::Empty(DType::kF32, Shape{n, n}, backend);
  Tensor c = Tensor::Empty(DType::kF32, Shape{n, n}, backend);
  auto gemm = [&] {
    backend.Gemm(false, false, n, n, n, 1.0f, a.ptr<float>(), n, b.ptr<float>(), n, 0.0f,
                 c.ptr<float>(), n);
  };
  gemm();  // warm up
  double best = 0;
  for (int rep = 0; rep < 10; ++rep) {
    const auto start = Clock::now();
    gemm();
    if (!backend.Synchronize().ok()) return 0;
    const double seconds = Seconds(start, Clock::now());
    best = std::max(best, 2.0 * n * n * n / seconds);
  }
  return best;
}

Trainer::Trainer(const RunConfig& config, ParameterStore& store, TrainTask& task,
                 const Options& options)
    : config_(config),
      store_(store),
      task_(task),
      options_(options),
      local_sync_(options.sync ? nullptr
                               : std::make_unique<LocalGradientSync>(store, config.optim())),
      sync_(options.sync ? options.sync : local_sync_.get()),
      group_(options.group ? options.group : &local_group_),
      arena_(store.backend(), task.PredictStepArenaBytes()) {
  // Zeros: no step has diverged.
  step_scalars_ =
      Tensor::Empty(DType::kI64, Shape{kLosses + 2 * std::max(1, options.micro_batches)},
                    store.backend());
  grad_scale_ = Tensor::Empty(DType::kF32, Shape{1}, store.backend());
  if (config.optim().ema_decay() > 0) {
    ema_ = std::make_unique<Ema>(store.backend(), store.values().ptr<float>(), store.numel());
  }
  plan_.baseline = options.baseline_rss;
  plan_.parameters = store.values().bytes();
  plan_.gradients = store.grads().bytes();
  plan_.optimizer = sync_->OptimizerStateBytes();
  // Sparse parameters: their values and optimizer state together.
  if (options.sparse) plan_.optimizer += options.sparse->StateBytes();
  plan_.communication = sync_->CommunicationBufferBytes();
  plan_.ema = ema_ ? static_cast<size_t>(ema_->size()) * sizeof(float) : 0;
  plan_.activations = task.PredictActivationBytes();
  if (store.backend().gemm_precision() == MathPrecision::kBf16) {
    plan_.bf16_weights = static_cast<size_t>(store.numel()) * sizeof(uint16_t);
  }
  // At most this rank's parameters, EMA and optimizer state (replicas that
  // another rank writes are copied too).
  if (config.checkpoint().every() > 0) {
    plan_.checkpoint = plan_.parameters + plan_.ema + plan_.optimizer;
  }
  task_.set_backward_hook([this] { MaybeInjectFault(current_step_, "backward"); });
  const std::string& progress = config.train().progress();
  progress_ = sync_->is_logging_rank() &&
              (progress == "on" || (progress == "auto" && isatty(STDOUT_FILENO)));
}

Trainer::~Trainer() {
  if (saver_.joinable()) saver_.join();
}

const float* Trainer::inference_weights() const {
  return ema_ ? ema_->values().ptr<float>() : store_.values().ptr<float>();
}

TrainingState Trainer::HostState(bool refresh) {
  TrainingState state{&store_, nullptr, sync_->optimizers(), options_.tp_rank};
  if (!store_.values().on_host()) {
    state.mirror = &mirror_;
    // Every copy queued at once into pinned memory, then one wait.
    std::vector<Tensor> buffers{store_.values()};
    for (AdamW* adam : state.optimizers) {
      buffers.push_back(adam->m());
      buffers.push_back(adam->v());
    }
    if (ema_) buffers.push_back(ema_->values());
    mirror_.Fetch(buffers, refresh);
  }
  if (ema_) state.ema = mirror_.Host(ema_->values(), /*refresh=*/false);
  return state;
}

absl::Status Trainer::Run() {
  TESSERA_RETURN_IF_ERROR(CreateRunDirectory());
  TESSERA_ASSIGN_OR_RETURN(const int64_t first_step, RestoreOrInitialize());
  TESSERA_RETURN_IF_ERROR(OpenMetrics(first_step));
  gemm_peak_ = options_.gemm_peak > 0 ? options_.gemm_peak : MeasureGemmPeak(store_.backend());
  TESSERA_ASSIGN_OR_RETURN(flops_per_sample_, JobFlopsPerSample());
  PrintMemoryPlan();
  return FinishRun(TrainSteps(first_step), first_step);
}

absl::Status Trainer::CreateRunDirectory() const {
  const std::string& run_dir = config_.train().run_dir();
  std::error_code error;
  std::filesystem::create_directories(run_dir, error);
  if (error) {
    return UsageError(
        absl::StrCat("train.run_dir \"", run_dir, "\": cannot create: ", error.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Trainer::RestoreOrInitialize() {
  const bool logging = sync_->is_logging_rank();
  if (!options_.resume_dir.empty()) {
    TESSERA_ASSIGN_OR_RETURN(const int64_t saved, Restore(options_.resume_dir, false));
    // Resumed from this run's own checkpoint: that step is saved already. (A
    // checkpoint of another run, say another layout, is saved again here.)
    if (std::filesystem::path(options_.resume_dir).parent_path() ==
        std::filesystem::path(CheckpointsRoot(config_.train().run_dir()))) {
      last_saved_step_ = saved;
      TESSERA_RETURN_IF_ERROR(SupersedeNewer(saved));
    }
    if (logging) {
      std::printf("resumed from %s: step %lld done, continuing at step %lld\n",
                  options_.resume_dir.c_str(), static_cast<long long>(saved),
                  static_cast<long long>(saved + 1));
    }
    return saved + 1;
  }
  if (!options_.init_dir.empty()) {
    TESSERA_RETURN_IF_ERROR(Restore(options_.init_dir, true).status());
    if (logging) std::printf("initialized the parameters from %s\n", options_.init_dir.c_str());
  }
  return 1;
}

absl::StatusOr<double> Trainer::JobFlopsPerSample() {
  // Each rank counts what it computes for one sample of its replica's batch
  // (its tp columns and heads, its sp tokens): the ranks of one replica add
  // up to the whole sample, so the job's sum is dp times it.
  TESSERA_ASSIGN_OR_RETURN(
      const std::vector<std::string> shares,
      group_->AllGather(absl::StrFormat("%.17g", task_.TrainingFlopsPerSample())));
  double sum = 0;
  for (const std::string& share : shares) sum += std::strtod(share.c_str(), nullptr);
  const int64_t dp = std::max<int64_t>(1, DataParallelSize(config_, group_->size()));
  return sum / static_cast<double>(dp);
}

absl::Status Trainer::OpenMetrics(int64_t first_step) {
  first_step_ = first_step;
  if (!sync_->is_logging_rank()) return absl::OkStatus();
  const std::string path = config_.train().run_dir() + "/metrics.jsonl";
  if (first_step > 1) {
    // Lines past the resumed step came from a run that did not get to save
    // them: they are trained again.
    TESSERA_RETURN_IF_ERROR(TrimMetrics(path, first_step - 1));
    if (config_.train().early_stop_patience() > 0) ReplayEarlyStop(path);
  }
  metrics_ = std::fopen(path.c_str(), first_step > 1 ? "a" : "w");
  if (metrics_ == nullptr) {
    return UsageError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void Trainer::PrintMemoryPlan() const {
  if (!sync_->is_logging_rank()) return;
  std::printf("memory plan: baseline %s, parameters %s, gradients %s, optimizer %s, ema %s, "
              "activations %s, communication %s, checkpoint snapshot %s, bf16 weight copy %s = %s\n",
              HumanBytes(plan_.baseline).c_str(), HumanBytes(plan_.parameters).c_str(),
              HumanBytes(plan_.gradients).c_str(), HumanBytes(plan_.optimizer).c_str(),
              HumanBytes(plan_.ema).c_str(), HumanBytes(plan_.activations).c_str(),
              HumanBytes(plan_.communication).c_str(), HumanBytes(plan_.checkpoint).c_str(),
              HumanBytes(plan_.bf16_weights).c_str(),
              HumanBytes(plan_.total()).c_str());
  std::printf("training FLOPs: %.6g GFLOP per sample (forward + backward, the whole model)\n",
              flops_per_sample_ / 1e9);
  Backend& backend = store_.backend();
  const char* precision = PrecisionName(backend.gemm_precision());
  const int64_t n = GemmPeakSize(backend);
  if (backend.host_accessible()) {
    std::printf("gemm peak (oneDNN, %s, n=%lld, %d threads): %.1f GFLOP/s per process\n",
                precision, static_cast<long long>(n), HostThreads(), gemm_peak_ / 1e9);
  } else {
    std::printf("gemm peak (cuBLASLt, %s, n=%lld): %.1f GFLOP/s per process\n", precision,
                static_cast<long long>(n), gemm_peak_ / 1e9);
  }
  std::fflush(stdout);
}

absl::Status Trainer::TrainSteps(int64_t first_step) {
  for (int64_t step = first_step; step <= config_.train().steps(); ++step) {
    TESSERA_RETURN_IF_ERROR(Step(step));
    TESSERA_RETURN_IF_ERROR(EvaluateIfDue(step));
    if (stop_early_) return StopEarly(step);
    TESSERA_ASSIGN_OR_RETURN(const bool stop, AgreeOnStop());
    TESSERA_RETURN_IF_ERROR(SaveIfDue(step, stop));
  }
  return absl::OkStatus();
}

absl::Status Trainer::EvaluateIfDue(int64_t step) {
  if (options_.eval == nullptr) return absl::OkStatus();
  const int64_t every = config_.train().eval_every();
  if (step == config_.train().steps() || (every > 0 && step % every == 0)) return Evaluate(step);
  return absl::OkStatus();
}

absl::Status Trainer::Evaluate(int64_t step) {
  // Never evaluate (or stop early on) weights a diverged step left.
  TESSERA_RETURN_IF_ERROR(ReadStep());
  const auto start = Clock::now();
  // The weights a user keeps (weights.h5, the samples) are the inference
  // weights: evaluate those, then put the trained parameters back.
  SwapParametersWithEma();
  absl::StatusOr<std::vector<EvalMetric>> metrics = options_.eval->Evaluate(arena_);
  arena_.Reset();
  SwapParametersWithEma();
  TESSERA_RETURN_IF_ERROR(metrics.status());
  std::vector<double> sums;
  for (const EvalMetric& metric : *metrics) {
    sums.push_back(metric.sum);
    sums.push_back(metric.count);
  }
  TESSERA_RETURN_IF_ERROR(sync_->SumOverReplicas(&sums));
  for (size_t i = 0; i < metrics->size(); ++i) {
    (*metrics)[i].sum = sums[2 * i];
    (*metrics)[i].count = sums[2 * i + 1];
  }
  TESSERA_RETURN_IF_ERROR(ReportEval(step, *metrics, Seconds(start, Clock::now())));
  return TrackEarlyStop(step, *metrics);
}

void Trainer::NoteWatchedMetric(int64_t step, double value) {
  const bool higher = config_.train().early_stop_mode() != "min";
  const bool better = std::isfinite(value) &&
                      (best_step_ < 0 || (higher ? value > best_value_ : value < best_value_));
  if (better) {
    best_value_ = value;
    best_step_ = step;
    evals_since_best_ = 0;
  } else {
    ++evals_since_best_;
  }
}

absl::Status Trainer::TrackEarlyStop(int64_t step, const std::vector<EvalMetric>& metrics) {
  const TrainConfig& t = config_.train();
  if (t.early_stop_patience() <= 0) return absl::OkStatus();
  const auto watched = std::find_if(metrics.begin(), metrics.end(), [&](const EvalMetric& m) {
    return m.name == t.early_stop_metric();
  });
  if (watched == metrics.end()) {
    std::vector<std::string> names;
    for (const EvalMetric& m : metrics) names.push_back(m.name);
    return UsageError(absl::StrCat("train.early_stop_metric=\"", t.early_stop_metric(),
                                   "\": the evaluation reports ", absl::StrJoin(names, ", ")));
  }
  NoteWatchedMetric(step, watched->count > 0 ? watched->sum / watched->count : std::nan(""));
  // The logging rank decides (after a resume only it has replayed the
  // evaluations before): the best step and whether the run stops.
  const bool logging = sync_->is_logging_rank();
  TESSERA_ASSIGN_OR_RETURN(best_step_, group_->AllReduceMax(logging ? best_step_ : -1));
  const bool due = logging && evals_since_best_ >= t.early_stop_patience();
  TESSERA_ASSIGN_OR_RETURN(const int64_t any, group_->AllReduceMax(due ? 1 : 0));
  stop_early_ = any != 0;
  // A new best is saved now, so that the run can end on these weights
  // (train.early_stop_restore_best) and pruning keeps it.
  if (best_step_ == step && t.early_stop_restore_best()) {
    return Save(step, /*blocking=*/false);
  }
  return absl::OkStatus();
}

void Trainer::ReplayEarlyStop(const std::string& metrics_path) {
  const std::string key = absl::StrCat("\"", config_.train().early_stop_metric(), "\":");
  std::ifstream in(metrics_path);
  for (std::string line; std::getline(in, line);) {
    long long step = 0;
    const size_t at = line.find(key);
    if (line.find("\"eval_samples\":") == std::string::npos || at == std::string::npos ||
        std::sscanf(line.c_str(), "{\"step\":%lld", &step) != 1) {
      continue;
    }
    // A value, or null (no finite value): strtod reads no number from "null".
    const char* value = line.c_str() + at + key.size();
    char* end = nullptr;
    const double parsed = std::strtod(value, &end);
    NoteWatchedMetric(step, end == value ? std::nan("") : parsed);
  }
}

absl::Status Trainer::StopEarly(int64_t step) {
  TESSERA_RETURN_IF_ERROR(Save(step, /*blocking=*/true));
  TESSERA_ASSIGN_OR_RETURN(const std::string restored, RestoreBest(step));
  if (!sync_->is_logging_rank()) return absl::OkStatus();
  const TrainConfig& t = config_.train();
  const std::string path = t.run_dir() + "/early_stop.json";
  std::ofstream out(path);
  out << absl::StrFormat(
      "{\"stopped_after_step\":%d,\"metric\":\"%s\",\"mode\":\"%s\",\"patience\":%d,"
      "\"best_step\":%d,\"best\":%s,\"restored\":%s}\n",
      step, t.early_stop_metric(), t.early_stop_mode(), t.early_stop_patience(), best_step_,
      // No evaluation gave a finite value: JSON has no NaN.
      best_step_ < 0 ? std::string("null") : absl::StrFormat("%.9g", best_value_),
      restored.empty() ? std::string("null") : absl::StrCat("\"", restored, "\""));
  out.close();
  if (!out) return UsageError(absl::StrCat("cannot write ", path));
  if (progress_) std::printf("\r\033[K");
  std::printf("early stop after step %lld: %s has not improved on %.6g (step %lld) for %lld "
              "evaluations; saved checkpoint %s, wrote %s\n",
              static_cast<long long>(step), t.early_stop_metric().c_str(), best_value_,
              static_cast<long long>(best_step_), static_cast<long long>(evals_since_best_),
              CheckpointDirName(step).c_str(), path.c_str());
  if (!restored.empty()) {
    std::printf("restored the weights of the best step %lld from %s: the run ends on them\n",
                static_cast<long long>(best_step_), restored.c_str());
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Trainer::RestoreBest(int64_t step) {
  if (!config_.train().early_stop_restore_best() || best_step_ < 0 || best_step_ == step) {
    return std::string();
  }
  const std::string dir = absl::StrCat(CheckpointsRoot(config_.train().run_dir()), "/",
                                       CheckpointDirName(best_step_));
  // Saved when that evaluation was the best (a run resumed from an older
  // tessera may lack it): keep the last weights and say so.
  TESSERA_ASSIGN_OR_RETURN(const int64_t committed,
                           group_->AllReduceMax(IsCommittedCheckpoint(dir) ? 1 : 0));
  if (committed == 0) {
    if (sync_->is_logging_rank()) {
      std::printf("warning: no committed checkpoint of the best step at %s: the run ends on the "
                  "weights of step %lld\n",
                  dir.c_str(), static_cast<long long>(step));
    }
    return std::string();
  }
  TESSERA_RETURN_IF_ERROR(Restore(dir, /*parameters_only=*/false).status());
  return dir;
}

void Trainer::SwapParametersWithEma() {
  if (!ema_) return;
  Backend& backend = store_.backend();
  const int64_t n = store_.numel();
  // Chunks through a small staging buffer: no second copy of the model.
  const int64_t chunk = std::min<int64_t>(n, int64_t{1} << 18);
  if (!swap_buffer_.defined()) swap_buffer_ = Tensor::Empty(DType::kF32, Shape{chunk}, backend);
  float* params = store_.values().ptr<float>();
  float* ema = ema_->values().ptr<float>();
  float* staging = swap_buffer_.ptr<float>();
  for (int64_t i = 0; i < n; i += chunk) {
    const size_t bytes = sizeof(float) * static_cast<size_t>(std::min(chunk, n - i));
    backend.Copy(staging, params + i, bytes);
    backend.Copy(params + i, ema + i, bytes);
    backend.Copy(ema + i, staging, bytes);
  }
}

absl::Status Trainer::ReportEval(int64_t step, const std::vector<EvalMetric>& metrics,
                                 double seconds) {
  if (!sync_->is_logging_rank()) return absl::OkStatus();
  std::string fields, line;
  for (const EvalMetric& metric : metrics) {
    const double value = metric.count > 0 ? metric.sum / metric.count : std::nan("");
    // JSON has no NaN or Inf: a metric without a finite value is null.
    absl::StrAppend(&fields, ",\"", metric.name, "\":",
                    std::isfinite(value) ? absl::StrFormat("%.9g", value) : "null");
    absl::StrAppend(&line, absl::StrFormat(" | %s %.6g", metric.name, value));
  }
  const int64_t samples = options_.eval->num_samples();
  const int written =
      std::fprintf(metrics_, "{\"step\":%lld,\"eval_samples\":%lld,\"eval_seconds\":%.6g%s}\n",
                   static_cast<long long>(step), static_cast<long long>(samples), seconds,
                   fields.c_str());
  if (written < 0 || std::fflush(metrics_) != 0 || std::ferror(metrics_)) {
    return UsageError(absl::StrCat("cannot write ", config_.train().run_dir(),
                                   "/metrics.jsonl: ", std::strerror(errno)));
  }
  if (progress_) std::printf("\r\033[K");
  std::printf("eval   %6lld/%lld%s | %lld held-out samples in %.1fs\n", static_cast<long long>(step),
              static_cast<long long>(config_.train().steps()), line.c_str(),
              static_cast<long long>(samples), seconds);
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status Trainer::SaveIfDue(int64_t step, bool stop) {
  const int64_t every = config_.checkpoint().every();
  if (stop || (every > 0 && (step % every == 0 || step == config_.train().steps()))) {
    TESSERA_RETURN_IF_ERROR(Save(step, /*blocking=*/stop));
  }
  if (!stop) return absl::OkStatus();
  return SavedForRequeue(absl::StrFormat(
      "stopped by %s after step %d and saved checkpoint %s: resume with --resume",
      StopSignal() == SIGTERM   ? "SIGTERM"
      : StopSignal() == SIGUSR1 ? "SIGUSR1"
                                : "a stop request",
      step, CheckpointDirName(step)));
}

absl::Status Trainer::FinishRun(absl::Status status, int64_t first_step) {
  // The last step's loss and guard, when no log step or save read them.
  if (status.ok()) status = ReadStep();
  // A run resumed at (or past) its last step still leaves that step saved.
  const int64_t final_step = std::max(first_step - 1, config_.train().steps());
  if (status.ok() && config_.checkpoint().every() > 0 && last_saved_step_ != final_step &&
      first_step > config_.train().steps()) {
    status = Save(final_step, /*blocking=*/true);
  }
  const absl::Status saved = WaitForSave();
  if (status.ok()) status = saved;
  if (progress_) std::printf("\r\033[K");
  if (metrics_ != nullptr) std::fclose(metrics_);
  metrics_ = nullptr;
  summary_.peak_rss_bytes = PeakRssBytes();
  summary_.plan = plan_;
  if (total_seconds_ > 0) {
    summary_.mean_samples_per_s = static_cast<double>(total_samples_) / total_seconds_;
    // Every process of the job computes: the peak is one process's times their number.
    summary_.peak_fraction =
        summary_.mean_samples_per_s * flops_per_sample_ / (gemm_peak_ * group_->size());
  }
  return status;
}

absl::Status Trainer::SupersedeNewer(int64_t step) {
  // This run continues from `step` (an explicit path, or checkpoint.fallback
  // past a newer one that failed verification): its newer checkpoints are
  // renamed step_N.superseded, out of the way of the saves to come and of
  // `latest`, but kept for inspection.
  if (group_->rank() == 0) {
    const std::filesystem::path root = CheckpointsRoot(config_.train().run_dir());
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator(root, error)) {
      // Only committed checkpoints of a later step: never the one loaded, never
      // a directory whose name is not exactly step_N (docs/checkpoints.md).
      const std::string name = entry.path().filename().string();
      const std::optional<int64_t> n = ParseStepDirectoryName(name);
      if (!n || *n <= step || !IsCommittedCheckpoint(entry.path().string())) continue;
      const std::filesystem::path moved = root / (name + ".superseded");
      std::filesystem::remove_all(moved, error);
      std::filesystem::rename(entry.path(), moved, error);
      if (error) {
        return CheckpointError(absl::StrCat("cannot move ", entry.path().string(), " aside: ",
                                            error.message()));
      }
      std::printf("moved %s aside to %s: this run continues from step %lld\n",
                  entry.path().c_str(), moved.c_str(), static_cast<long long>(step));
    }
  }
  return group_->Barrier();
}

absl::StatusOr<bool> Trainer::AgreeOnStop() {
  TESSERA_ASSIGN_OR_RETURN(const int64_t any, group_->AllReduceMax(StopRequested() ? 1 : 0));
  return any != 0;
}

absl::StatusOr<int64_t> Trainer::Restore(const std::string& dir, bool parameters_only) {
  // Device buffers are refreshed first: a parameters-only load keeps the rest.
  const TrainingState state = HostState(/*refresh=*/true);
  absl::StatusOr<int64_t> step = [&]() -> absl::StatusOr<int64_t> {
    TESSERA_ASSIGN_OR_RETURN(CheckpointManifest manifest, ReadCheckpointManifest(dir));
    LoadOptions load;
    // One process holds the whole model: anything else stored is a mismatch.
    load.require_all_tensors = group_->size() == 1;
    std::vector<LoadPiece> targets = LoadTargets(state, parameters_only);
    if (options_.sparse) {
      for (LoadPiece& piece : options_.sparse->LoadTargets(parameters_only)) {
        targets.push_back(std::move(piece));
      }
    }
    TESSERA_RETURN_IF_ERROR(LoadPieces(dir, manifest, targets, load));
    if (state.mirror != nullptr) state.mirror->WriteBack();
    if (options_.sparse) TESSERA_RETURN_IF_ERROR(options_.sparse->FinishLoad());
    return manifest.step();
  }();
  // Every rank must know if any failed, or the others would wait for it in
  // the first collective.
  TESSERA_ASSIGN_OR_RETURN(const int64_t failed, group_->AllReduceMax(step.ok() ? 0 : 1));
  if (!step.ok()) return step.status();
  if (failed) {
    return CheckpointError(
        absl::StrCat("another rank failed to load checkpoint ", dir, " (its message says why)"));
  }
  if (parameters_only) {
    if (ema_) {
      store_.backend().Copy(ema_->values().address(), store_.values().address(),
                            store_.values().bytes());
    }
    return 0;
  }
  for (AdamW* adam : sync_->optimizers()) adam->set_step(*step);
  return *step;
}

absl::Status Trainer::WaitForSave() {
  if (saver_.joinable()) saver_.join();
  saving_ = nullptr;
  absl::Status status = save_status_;
  save_status_ = absl::OkStatus();
  return status;
}

absl::Status Trainer::Save(int64_t step, bool blocking) {
  if (step == last_saved_step_) return absl::OkStatus();  // a signal right after a save
  // A checkpoint never holds the weights of a diverged run: the guard is
  // read first (and the step's loss with it).
  TESSERA_RETURN_IF_ERROR(ReadStep());
  // At most one save in flight: the previous one finishes first.
  TESSERA_RETURN_IF_ERROR(WaitForSave());
  const auto start = Clock::now();
  // One snapshot buffer for the run, refilled by every save (no save is in
  // flight now).
  if (!snapshot_) snapshot_ = std::make_unique<CheckpointSnapshot>();
  CheckpointSnapshot* snapshot = snapshot_.get();
  snapshot->meta = CheckpointMeta();
  CheckpointMeta& meta = snapshot->meta;
  meta.step = step;
  meta.samples_seen = step * config_.train().global_batch();
  meta.tokens_seen = meta.samples_seen * task_.TokensPerSample();
  std::tie(meta.sampler_epoch, meta.sampler_position) = task_.DataPosition();
  meta.optimizer_step = step;
  meta.mesh = options_.mesh;
  meta.run_config = RunConfigToText(config_);
  // Every random draw is a counter-based function of (seed, step, sample).
  meta.rng_state = absl::StrCat("counter seed=", config_.train().seed(), " step=", step);
  SnapshotPieces(HostState(/*refresh=*/true), &snapshot->pieces);
  if (options_.sparse) options_.sparse->AppendSnapshot(&snapshot->pieces);
  MaybeInjectFault(step, "save");
  last_saved_step_ = step;
  SaveOptions save;
  save.keep_last = config_.checkpoint().keep_last();
  if (config_.train().early_stop_restore_best()) save.keep_step = best_step_;
  save.corrupt_first_piece = options_.fault.corrupt_step == step;
  const std::string run_dir = config_.train().run_dir();
  const bool logging = sync_->is_logging_rank();
  if (!config_.checkpoint().async() || blocking || options_.async_group == nullptr) {
    TESSERA_RETURN_IF_ERROR(SaveCheckpoint(*group_, run_dir, *snapshot, save));
    if (logging) {
      std::printf("saved checkpoint %s/%s in %.2fs\n", CheckpointsRoot(run_dir).c_str(),
                  CheckpointDirName(step).c_str(), Seconds(start, Clock::now()));
      std::fflush(stdout);
    }
    return absl::OkStatus();
  }
  // Background: the copy above was the only pause of the step loop.
  saving_ = snapshot;
  if (logging) {
    std::printf("saving checkpoint %s in the background (host copy %.3fs)\n",
                CheckpointDirName(step).c_str(), Seconds(start, Clock::now()));
    std::fflush(stdout);
  }
  saver_ = std::thread([this, run_dir, save] {
    // The lowest CPU priority: on a busy host the writer takes idle cycles
    // rather than the step loop's (nice applies per thread on Linux).
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
    save_status_ = SaveCheckpoint(*options_.async_group, run_dir, *saving_, save);
  });
  return absl::OkStatus();
}

void Trainer::MaybeInjectFault(int64_t step, const char* phase) const {
  const Options::Fault& fault = options_.fault;
  if (fault.action == Options::Fault::Action::kNone || fault.step != step || fault.phase != phase) {
    return;
  }
  std::fprintf(stderr, "tessera: fault injection: %s at step %lld, phase %s\n",
               fault.action == Options::Fault::Action::kKill ? "killing this process" : "hanging",
               static_cast<long long>(step), phase);
  std::fflush(stderr);
  if (fault.action == Options::Fault::Action::kKill) raise(SIGKILL);
  for (;;) pause();
}

absl::Status Trainer::Step(int64_t step) {
  current_step_ = step;
  MaybeInjectFault(step, "forward");
  const auto start = Clock::now();
  Backend& backend = store_.backend();
  store_.ZeroGrads();
  // Per-element weighting: each micro-batch accumulates the gradient of its
  // per-element loss sum, and every sum is divided by the global batch's
  // element count once the replicas have agreed on it. The losses stay in
  // device memory (step_scalars_) until a read; the counts are host values.
  QueuedStep queued;
  queued.step = step;
  double elements = 0;
  {
    // A bf16 run's GEMMs read bf16 copies of the weights made here, once per
    // step, rather than rounding each weight in every GEMM call.
    ParameterStore::ScopedBf16Values bf16_weights(store_);
    // The micro-batches' auxiliary slots start at 0 (tasks add into them).
    backend.Memset(StepScalar(kLosses), 0, 2 * options_.micro_batches * sizeof(double));
    for (int micro = 0; micro < options_.micro_batches; ++micro) {
      arena_.Reset();
      sync_->BeginMicroBatch(micro + 1 == options_.micro_batches);
      TESSERA_ASSIGN_OR_RETURN(MicroBatchResult result,
                               task_.RunMicroBatch(arena_, step, micro, /*loss_scale=*/1.0f,
                                                   StepScalar(kLosses + 2 * micro)));
      queued.elements.push_back(result.elements);
      queued.divisors.push_back(result.loss_divisor);
      queued.aux_sum += result.elements * result.aux_loss;
      elements += result.elements;
    }
  }
  arena_.Reset();
  task_.EndStep();
  MaybeInjectFault(step, "reduce");
  std::vector<double> counts = {elements};
  TESSERA_RETURN_IF_ERROR(sync_->SumOverReplicas(&counts));
  if (!(counts[0] > 0)) {
    return NumericalError(absl::StrFormat(
        "step %d: the global batch holds no elements for the loss to average over", step));
  }
  TESSERA_RETURN_IF_ERROR(sync_->FinishBackward(counts[0]));
  // The norm, the guard and the clip scale on the device: a loss or
  // gradient norm that is not finite (on any rank: the losses join the
  // norm) skips this update and every later one, weights, moments and EMA
  // alike, and records the step for the next read to report.
  TESSERA_RETURN_IF_ERROR(sync_->GradNormSquared(
      StepScalar(kLosses), 2 * options_.micro_batches, StepScalar(kNormSquared)));
  backend.StepGuard(StepScalar(kNormSquared), config_.optim().grad_clip(), step,
                    StepScalar(kDivergedStep), grad_scale_.ptr<float>());
  const double lr = LearningRate(config_.optim(), step - 1, config_.train().steps());
  MaybeInjectFault(step, "optimizer");
  TESSERA_RETURN_IF_ERROR(sync_->Step(static_cast<float>(lr), grad_scale_.ptr<float>()));
  if (options_.sparse) {
    // Sparse parameters (HSTU's item table) take no device guard yet: the
    // host reads it (one float a step) and skips their step after a
    // divergence, so the table is never updated by a diverged step either.
    float scale = 0;
    backend.CopyToHost(&scale, grad_scale_.address(), sizeof(float));
    if (scale != 0) {
      const auto sparse_start = Clock::now();
      TESSERA_RETURN_IF_ERROR(options_.sparse->Step(lr, counts[0], step));
      sparse_step_seconds_ = Seconds(sparse_start, Clock::now());
    }
  }
  if (ema_) {
    double decay = config_.optim().ema_decay();
    if (config_.optim().ema_warmup()) {
      decay = std::min(decay, (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)));
    }
    ema_->Update(store_.values().ptr<float>(), decay, grad_scale_.ptr<float>());
  }
  TESSERA_RETURN_IF_ERROR(EndStepOnDevice());
  queued_ = std::move(queued);
  ++summary_.steps;  // steps this process ran (fewer than `step` after a resume)
  // The step trained the global batch, however the ranks split it (dp
  // replicas split the samples; sp and tp ranks share theirs).
  const int64_t samples = config_.train().global_batch();
  summary_.samples += samples;
  // Reads at log steps, and at the first step this process runs (the
  // summary's first loss). A log step waits for the device first, so the
  // window's time is the device's (the host runs at most a step ahead).
  const bool read = IsLogStep(step) || summary_.steps == 1;
  if (read) TESSERA_RETURN_IF_ERROR(backend.Synchronize());
  const double seconds = Seconds(start, Clock::now());
  if (read) TESSERA_RETURN_IF_ERROR(ReadStep());
  return Report(step, lr, seconds, samples);
}

bool Trainer::IsLogStep(int64_t step) const {
  const TrainConfig& train = config_.train();
  return step == 1 || step % train.log_every() == 0 || step == train.steps();
}

absl::Status Trainer::EndStepOnDevice() {
  Backend& backend = store_.backend();
  if (!step_end_[0]) {
    step_end_[0] = backend.CreateEvent();
    step_end_[1] = backend.CreateEvent();
  }
  // The step's end, then the previous step's: the device works on this step
  // while the host queues the next, and no further (the queue and the
  // memory the steps free back stay bounded).
  backend.Record(*step_end_[step_ends_ % 2]);
  if (step_ends_ > 0) backend.HostWait(*step_end_[(step_ends_ - 1) % 2]);
  ++step_ends_;
  // Asynchronous errors surface here, naming the op, without a wait.
  return backend.PollErrors();
}

absl::Status Trainer::ReadStep() {
  if (queued_.step == 0) return absl::OkStatus();
  const int64_t step = queued_.step;
  std::vector<double> scalars(static_cast<size_t>(step_scalars_.numel()));
  store_.backend().CopyToHost(scalars.data(), step_scalars_.address(), step_scalars_.bytes());
  double loss_sum = 0, aux_sum = queued_.aux_sum, elements = 0;
  for (size_t m = 0; m < queued_.elements.size(); ++m) {
    loss_sum += queued_.elements[m] * (scalars[kLosses + 2 * m] / queued_.divisors[m]);
    // The auxiliary losses a task left on the device (the host's part is
    // already in aux_sum).
    aux_sum += queued_.elements[m] * scalars[kLosses + 2 * m + 1];
    elements += queued_.elements[m];
  }
  // Every replica sees the same sums and the same guard, so all stop together.
  std::vector<double> sums = {loss_sum, aux_sum, elements};
  queued_ = QueuedStep();
  TESSERA_RETURN_IF_ERROR(sync_->SumOverReplicas(&sums));
  const double loss = sums[0] / sums[2];
  const double aux = sums[1] / sums[2];
  const double grad_norm = std::sqrt(scalars[kNormSquared]);
  const auto diverged = static_cast<int64_t>(scalars[kDivergedStep]);
  const auto what = [](double value) { return std::isnan(value) ? "NaN" : "Inf"; };
  if (diverged == step && !std::isfinite(loss + aux)) {
    return NumericalError(absl::StrFormat(
        "loss is %s at step %d: training diverged; lower optim.lr or check the data (the step's "
        "update was skipped: the weights are those of step %d)",
        what(loss + aux), step, step - 1));
  }
  if (diverged == step) {
    return NumericalError(absl::StrFormat(
        "gradient norm is %s at step %d: training diverged; lower optim.lr or check the data "
        "(the step's update was skipped: the weights are those of step %d)",
        what(grad_norm), step, step - 1));
  }
  if (diverged != 0) {
    return NumericalError(absl::StrFormat(
        "the loss or the gradient norm is NaN or Inf at step %d (found at step %d): training "
        "diverged; lower optim.lr or check the data (the updates from step %d on were skipped: "
        "the weights are those of step %d)",
        diverged, step, diverged, diverged - 1));
  }
  if (!std::isfinite(loss) || !std::isfinite(aux)) {
    // Only a rank's own loss joins the guard under data parallelism without
    // a gathered norm; the sums over the replicas still stop every rank.
    return NumericalError(absl::StrFormat(
        "loss is %s at step %d: training diverged; lower optim.lr or check the data",
        what(loss + aux), step));
  }
  loss_ = loss;
  aux_ = aux;
  grad_norm_ = grad_norm;
  if (step == first_step_) summary_.first_loss = loss;  // the first step this process ran
  summary_.last_loss = loss;
  return absl::OkStatus();
}

absl::Status Trainer::Report(int64_t step, double lr, double step_seconds, int64_t samples) {
  const double loss = loss_, aux = aux_, grad_norm = grad_norm_;
  const TrainConfig& train = config_.train();
  // The first step this process runs pays one-time costs (arena growth, page
  // faults); leave it out of the throughput and the ETA unless it is the only one.
  if (step > first_step_ || first_step_ == train.steps()) {
    total_seconds_ += step_seconds;
    total_samples_ += samples;
    ++timed_steps_;
  }
  const double seconds_per_step =
      timed_steps_ > 0 ? total_seconds_ / static_cast<double>(timed_steps_) : step_seconds;
  eta_seconds_ = seconds_per_step * static_cast<double>(train.steps() - step);
  window_seconds_ += step_seconds;
  window_samples_ += samples;
  const bool log = sync_->is_logging_rank() && IsLogStep(step);
  if (log) {
    const double samples_per_s = static_cast<double>(window_samples_) / window_seconds_;
    const double tokens_per_s = samples_per_s * static_cast<double>(task_.TokensPerSample());
    const double flops_per_s = samples_per_s * flops_per_sample_;
    const double peak_fraction = flops_per_s / (gemm_peak_ * group_->size());
    const size_t rss = CurrentRssBytes();
    std::string extras = task_.MetricsJsonFields();
    if (options_.sparse) {
      // The last step's sparse-parameter update (e.g. HSTU's item table).
      absl::StrAppend(&extras, extras.empty() ? "" : ",",
                      absl::StrFormat("\"sparse_step_seconds\":%.6g", sparse_step_seconds_));
    }
    const int written = std::fprintf(metrics_,
                 "{\"step\":%lld,\"loss\":%.9g,\"aux_loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,"
                 "\"samples_per_s\":%.6g,\"tokens_per_s\":%.6g,\"flops_per_s\":%.6g,"
                 "\"peak_fraction\":%.6g,\"rss_bytes\":%zu%s%s}\n",
                 static_cast<long long>(step), loss, aux, lr, grad_norm, samples_per_s,
                 tokens_per_s, flops_per_s, peak_fraction, rss, extras.empty() ? "" : ",",
                 extras.c_str());
    // A full disk or a file-size limit must stop the run now, not at the end.
    if (written < 0 || std::fflush(metrics_) != 0 || std::ferror(metrics_)) {
      return UsageError(absl::StrCat("cannot write ", config_.train().run_dir(),
                                     "/metrics.jsonl: ", std::strerror(errno)));
    }
    if (progress_) std::printf("\r\033[K");
    std::printf("step %6lld/%lld | loss %.5f | aux %.4f | lr %.3g | grad_norm %.3f | %.1f samples/s "
                "| %.1f%% of peak | rss %s%s\n",
                static_cast<long long>(step), static_cast<long long>(train.steps()), loss, aux, lr,
                grad_norm, samples_per_s, 100 * peak_fraction, HumanBytes(rss).c_str(),
                task_.LogSuffix().c_str());
    window_seconds_ = 0;
    window_samples_ = 0;
  }
  if (progress_) {
    constexpr int kWidth = 30;
    const double done = static_cast<double>(step) / static_cast<double>(train.steps());
    const int filled = static_cast<int>(done * kWidth);
    std::printf("\r[%s%s] %lld/%lld loss %.4f eta %s", std::string(filled, '#').c_str(),
                std::string(kWidth - filled, '.').c_str(), static_cast<long long>(step),
                static_cast<long long>(train.steps()), loss,
                HumanSeconds(eta_seconds_).c_str());
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace tessera
