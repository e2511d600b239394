#include "runtime/train/trainer.h"

#include <unistd.h>

#include <csignal>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/optim/clip.h"
#include "runtime/optim/schedule.h"
#include "runtime/train/memory.h"

namespace tessera {
namespace {
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", bytes, units[u]);
}

std::string HumanSeconds(double s) {
  if (s < 60) return absl::StrFormat("%.0fs", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return absl::StrFormat("%dh%02dm", static_cast<int>(s) / 3600, static_cast<int>(s) / 60 % 60);
}
}  // namespace

double Trainer::MeasureGemmPeak() {
  constexpr int64_t n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  cpu::Gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm up
  double best = 0;
  for (int rep = 0; rep < 10; ++rep) {
    const auto start = Clock::now();
    cpu::Gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
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
      arena_(task.PredictStepArenaBytes()) {
  if (config.optim().ema_decay() > 0) {
    ema_ = std::make_unique<Ema>(store.values().data<float>(), store.numel());
  }
  plan_.baseline = options.baseline_rss;
  plan_.parameters = store.values().bytes();
  plan_.gradients = store.grads().bytes();
  plan_.optimizer = sync_->OptimizerStateBytes();
  plan_.communication = sync_->CommunicationBufferBytes();
  plan_.ema = ema_ ? static_cast<size_t>(ema_->size()) * sizeof(float) : 0;
  plan_.activations = task.PredictActivationBytes();
  const std::string& progress = config.train().progress();
  progress_ = sync_->is_logging_rank() &&
              (progress == "on" || (progress == "auto" && isatty(STDOUT_FILENO)));
}

const float* Trainer::inference_weights() const {
  return ema_ ? ema_->values().data<float>() : store_.values().data<float>();
}

absl::Status Trainer::Run() {
  const TrainConfig& train = config_.train();
  std::error_code error;
  std::filesystem::create_directories(train.run_dir(), error);
  if (error) {
    return UsageError(absl::StrCat("train.run_dir \"", train.run_dir(),
                                   "\": cannot create: ", error.message()));
  }
  const bool logging = sync_->is_logging_rank();
  const std::string metrics_path = train.run_dir() + "/metrics.jsonl";
  if (logging) {
    metrics_ = std::fopen(metrics_path.c_str(), "w");
    if (metrics_ == nullptr) {
      return UsageError(absl::StrCat("cannot write ", metrics_path, ": ", std::strerror(errno)));
    }
  }
  gemm_peak_ = options_.gemm_peak > 0 ? options_.gemm_peak : MeasureGemmPeak();
  if (logging) {
    std::printf("memory plan: baseline %s, parameters %s, gradients %s, optimizer %s, ema %s, "
              "activations %s, communication %s = %s\n",
              HumanBytes(plan_.baseline).c_str(), HumanBytes(plan_.parameters).c_str(), HumanBytes(plan_.gradients).c_str(),
              HumanBytes(plan_.optimizer).c_str(), HumanBytes(plan_.ema).c_str(),
              HumanBytes(plan_.activations).c_str(), HumanBytes(plan_.communication).c_str(),
              HumanBytes(plan_.total()).c_str());
    std::printf("gemm peak (oneDNN sgemm, n=1024, %d threads): %.1f GFLOP/s per process\n",
                cpu::NumThreads(), gemm_peak_ / 1e9);
    std::fflush(stdout);
  }

  absl::Status status;
  for (int64_t step = 1; step <= train.steps() && status.ok(); ++step) status = Step(step);
  if (progress_) std::printf("\r\033[K");
  if (metrics_ != nullptr) std::fclose(metrics_);
  metrics_ = nullptr;
  summary_.peak_rss_bytes = PeakRssBytes();
  summary_.plan = plan_;
  if (total_seconds_ > 0) {
    summary_.mean_samples_per_s = static_cast<double>(total_samples_) / total_seconds_;
    summary_.peak_fraction = summary_.mean_samples_per_s * task_.TrainingFlopsPerSample() /
                             (gemm_peak_ * sync_->num_replicas());
  }
  return status;
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
  MaybeInjectFault(step, "forward");
  const auto start = Clock::now();
  store_.ZeroGrads();
  const float loss_scale = 1.0f / static_cast<float>(options_.micro_batches);
  double loss = 0, aux = 0;
  int64_t samples = 0;
  for (int micro = 0; micro < options_.micro_batches; ++micro) {
    arena_.Reset();
    sync_->BeginMicroBatch(micro + 1 == options_.micro_batches);
    TESSERA_ASSIGN_OR_RETURN(MicroBatchResult result,
                             task_.RunMicroBatch(arena_, step, micro, loss_scale));
    loss += result.loss * loss_scale;
    aux += result.aux_loss * loss_scale;
    samples += result.samples;
  }
  arena_.Reset();
  task_.EndStep();
  MaybeInjectFault(step, "reduce");
  TESSERA_RETURN_IF_ERROR(sync_->FinishBackward());
  // Every replica sees the same averages, so all stop together on a NaN.
  std::vector<double> averaged = {loss, aux};
  TESSERA_RETURN_IF_ERROR(sync_->AverageOverReplicas(&averaged));
  loss = averaged[0];
  aux = averaged[1];
  samples *= sync_->num_replicas();
  if (!std::isfinite(loss) || !std::isfinite(aux)) {
    return NumericalError(absl::StrFormat(
        "loss is %s at step %d: training diverged; lower optim.lr or check the data",
        std::isnan(loss + aux) ? "NaN" : "Inf", step));
  }

  TESSERA_ASSIGN_OR_RETURN(const double norm_squared, sync_->GradNormSquared());
  const double grad_norm = std::sqrt(norm_squared);
  if (!std::isfinite(grad_norm)) {
    return NumericalError(absl::StrFormat(
        "gradient norm is %s at step %d: training diverged; lower optim.lr or check the data",
        std::isnan(grad_norm) ? "NaN" : "Inf", step));
  }
  double scale = 1;
  if (config_.optim().grad_clip() > 0) scale = ClipScale(grad_norm, config_.optim().grad_clip());
  const double lr = LearningRate(config_.optim(), step - 1, config_.train().steps());
  MaybeInjectFault(step, "optimizer");
  TESSERA_RETURN_IF_ERROR(sync_->Step(static_cast<float>(lr), static_cast<float>(scale)));
  if (ema_) {
    double decay = config_.optim().ema_decay();
    if (config_.optim().ema_warmup()) {
      decay = std::min(decay, (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)));
    }
    ema_->Update(store_.values().data<float>(), decay);
  }

  const double seconds = Seconds(start, Clock::now());
  if (step == 1) summary_.first_loss = loss;
  summary_.last_loss = loss;
  summary_.steps = step;
  Report(step, loss, aux, lr, grad_norm, seconds, samples);
  return absl::OkStatus();
}

void Trainer::Report(int64_t step, double loss, double aux, double lr, double grad_norm,
                     double step_seconds, int64_t samples) {
  const TrainConfig& train = config_.train();
  // The first step pays one-time costs (arena growth, page faults); leave it
  // out of the throughput figures unless it is the only one.
  if (step > 1 || train.steps() == 1) {
    total_seconds_ += step_seconds;
    total_samples_ += samples;
  }
  window_seconds_ += step_seconds;
  window_samples_ += samples;
  const bool log = sync_->is_logging_rank() &&
                   (step == 1 || step % train.log_every() == 0 || step == train.steps());
  if (log) {
    const double samples_per_s = static_cast<double>(window_samples_) / window_seconds_;
    const double tokens_per_s = samples_per_s * static_cast<double>(task_.TokensPerSample());
    const double flops_per_s = samples_per_s * task_.TrainingFlopsPerSample();
    const double peak_fraction = flops_per_s / (gemm_peak_ * sync_->num_replicas());
    const size_t rss = CurrentRssBytes();
    std::string extras = task_.MetricsJsonFields();
    std::fprintf(metrics_,
                 "{\"step\":%lld,\"loss\":%.9g,\"aux_loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,"
                 "\"samples_per_s\":%.6g,\"tokens_per_s\":%.6g,\"flops_per_s\":%.6g,"
                 "\"peak_fraction\":%.6g,\"rss_bytes\":%zu%s%s}\n",
                 static_cast<long long>(step), loss, aux, lr, grad_norm, samples_per_s,
                 tokens_per_s, flops_per_s, peak_fraction, rss, extras.empty() ? "" : ",",
                 extras.c_str());
    std::fflush(metrics_);
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
    const double rate = total_seconds_ > 0 ? total_seconds_ / static_cast<double>(step) : step_seconds;
    std::printf("\r[%s%s] %lld/%lld loss %.4f eta %s", std::string(filled, '#').c_str(),
                std::string(kWidth - filled, '.').c_str(), static_cast<long long>(step),
                static_cast<long long>(train.steps()), loss,
                HumanSeconds(rate * static_cast<double>(train.steps() - step)).c_str());
  }
  std::fflush(stdout);
}

}  // namespace tessera
