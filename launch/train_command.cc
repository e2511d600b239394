// tessera train: one process trains the model a run config describes.
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_format.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "launch/model_setup.h"
#include "models/dit_moe/task.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/config/config.h"
#include "runtime/train/memory.h"
#include "runtime/train/trainer.h"

namespace tessera {
namespace {
constexpr char kTrainUsage[] = R"(usage: tessera train --config FILE [--set FIELD=VALUE]... [--resume]

Trains the model described by a run config (text-format tessera.RunConfig,
see docs/config.md) on this process.

  --config FILE        run config, e.g. configs/quickstart.textproto
  --set FIELD=VALUE    override one field, e.g. --set train.steps=100 (repeatable)
  --resume             continue from the latest checkpoint (checkpoint.resume=latest)

Writes to train.run_dir: config.textproto (the effective config), metrics.jsonl
(one JSON object per logged step), weights.h5 (final EMA weights) and
samples.png (a class-conditional sample grid).
)";

double Gib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

absl::Status Train(const ParsedArguments& args) {
  if (!args.Has("config")) return UsageError("train: --config FILE is required (see --help)");
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(args.Get("config")));
  std::vector<std::string> overrides;
  if (args.values.count("set")) overrides = args.values.at("set");
  if (args.flags.count("resume")) overrides.push_back("checkpoint.resume=latest");
  TESSERA_RETURN_IF_ERROR(ApplyOverrides(&config, overrides));
  constexpr int kWorldSize = 1;
  TESSERA_RETURN_IF_ERROR(ValidateRunConfig(config, kWorldSize));
  ConfigureThreads(config);

  // The GEMM reference first, so its buffers count in the baseline.
  Trainer::Options options;
  options.gemm_peak = Trainer::MeasureGemmPeak();
  options.baseline_rss = CurrentRssBytes();
  TESSERA_ASSIGN_OR_RETURN(BuiltModel built, BuildModel(config));
  const int64_t micro_batch = MicroBatch(config, kWorldSize);
  const int64_t per_replica = config.train().global_batch() / DataParallelSize(config, kWorldSize);
  TESSERA_ASSIGN_OR_RETURN(
      auto task, dit_moe::DitMoeTask::Create(config, *built.model, /*replica=*/0,
                                             /*num_replicas=*/1, micro_batch));
  const int micro_batches = static_cast<int>((per_replica + micro_batch - 1) / micro_batch);

  const std::string& run_dir = config.train().run_dir();
  std::printf("tessera train: DiT-MoE, %lld parameters, %.2f GFLOP per training sample, "
              "global batch %lld (%d micro-batch%s of %lld), %lld steps -> %s\n",
              static_cast<long long>(built.store->numel()),
              task->TrainingFlopsPerSample() / 1e9,
              static_cast<long long>(config.train().global_batch()), micro_batches,
              micro_batches == 1 ? "" : "es", static_cast<long long>(micro_batch),
              static_cast<long long>(config.train().steps()), run_dir.c_str());

  // Everything is validated and the data is open: only now touch the run directory.
  std::error_code error;
  std::filesystem::create_directories(run_dir, error);
  const std::string config_path = run_dir + "/config.textproto";
  std::FILE* file = error ? nullptr : std::fopen(config_path.c_str(), "w");
  if (file == nullptr) {
    return UsageError(absl::StrFormat("train.run_dir \"%s\": cannot write %s", run_dir,
                                      config_path));
  }
  const std::string text = RunConfigToText(config);
  std::fwrite(text.data(), 1, text.size(), file);
  std::fclose(file);

  options.micro_batches = micro_batches;
  Trainer trainer(config, *built.store, *task, options);
  absl::Status status = trainer.Run();
  TESSERA_RETURN_IF_ERROR(status);

  const TrainSummary& summary = trainer.summary();
  std::printf("done: %lld steps, loss %.4f -> %.4f, %.1f samples/s, %.1f%% of the GEMM peak\n",
              static_cast<long long>(summary.steps), summary.first_loss, summary.last_loss,
              summary.mean_samples_per_s, 100 * summary.peak_fraction);
  std::printf("memory: peak RSS %.3f GiB, predicted %.3f GiB (%+.1f%%)\n",
              Gib(summary.peak_rss_bytes), Gib(summary.plan.total()),
              100.0 * (static_cast<double>(summary.peak_rss_bytes) /
                           static_cast<double>(summary.plan.total()) - 1));

  // Save and sample with the EMA weights.
  std::memcpy(built.store->values().raw(), trainer.inference_weights(),
              built.store->values().bytes());
  const std::string weights_path = run_dir + "/weights.h5";
  TESSERA_RETURN_IF_ERROR(SaveWeights(weights_path, *built.store, trainer.inference_weights()));
  std::printf("wrote %s\n", weights_path.c_str());
  const int per_class = config.train().sample_grid_per_class();
  if (per_class > 0) {
    const std::string png = run_dir + "/samples.png";
    const DitMoeConfig& m = config.dit_moe();
    TESSERA_RETURN_IF_ERROR(WriteSampleGrid(*built.model, config, png, per_class,
                                            m.sample_steps(), m.cfg_scale(),
                                            config.train().seed()));
    std::printf("wrote %s (%d per class, %d steps, cfg %.1f)\n", png.c_str(), per_class,
                m.sample_steps(), m.cfg_scale());
  }
  return absl::OkStatus();
}
}  // namespace

int ReportError(const absl::Status& status) {
  std::fprintf(stderr, "tessera: error: %s\n", std::string(status.message()).c_str());
  return ExitCodeFor(status);
}

int TrainCommand(const std::vector<std::string>& raw) {
  auto args = ParseArguments(raw, {"config", "set"}, {"resume", "help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help")) {
    std::fputs(kTrainUsage, stdout);
    return 0;
  }
  const absl::Status status = Train(*args);
  return status.ok() ? 0 : ReportError(status);
}

}  // namespace tessera
