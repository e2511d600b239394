// tessera sample: class-conditional images from a finished DiT-MoE training
// run. The command is DiT-MoE's alone (other models end their runs with their
// own hook, models/registry.h); it refuses a run of any other model.
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "launch/memory_fit.h"
#include "launch/model_setup.h"
#include "models/dit_moe/family.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {
constexpr char kSampleUsage[] = R"(usage: tessera sample --run RUN_DIR [options]

Generates a grid of images, one row per class, with the weights a DiT-MoE
training run saved (RUN_DIR/weights.h5) and the model in
RUN_DIR/config.textproto. Runs of other models are refused (exit 2).

  --run DIR          a training run directory (train.run_dir)
  --out FILE         PNG to write (default RUN_DIR/samples.png)
  --per-class N      images per class (default 8)
  --steps N          sampler steps (default model.dit_moe.sample_steps)
  --cfg S            classifier-free guidance scale (default model.dit_moe.cfg_scale)
  --seed N           noise seed (default 0)
  --threads N        CPU threads, 0 to 1024 (default 0: all cores)

Limits: --per-class 1 to 1024, --steps 1 to 100000, --cfg finite and >= 0;
the folder of --out must exist. Errors exit 2 (usage), 4 (weights).
)";

struct SampleOptions {
  std::string out;
  int64_t per_class = 8, steps = 0, seed = 0, threads = 0;
  double cfg = 0;
};

// Every option checked before anything is built: ranges, finite numbers,
// an output folder that exists.
absl::StatusOr<SampleOptions> ParseSampleOptions(const ParsedArguments& args,
                                                 const RunConfig& config,
                                                 const std::string& run_dir) {
  const DitMoeConfig& m = config.dit_moe();
  SampleOptions o;
  TESSERA_ASSIGN_OR_RETURN(o.threads, args.GetIntInRange("threads", 0, 0, 1024));
  TESSERA_ASSIGN_OR_RETURN(o.per_class, args.GetIntInRange("per-class", 8, 1, 1024));
  TESSERA_ASSIGN_OR_RETURN(o.steps, args.GetIntInRange("steps", m.sample_steps(), 1, 100000));
  TESSERA_ASSIGN_OR_RETURN(o.cfg, args.GetDouble("cfg", m.cfg_scale()));
  TESSERA_ASSIGN_OR_RETURN(o.seed, args.GetInt("seed", 0));
  if (o.cfg < 0) return UsageError(absl::StrCat("sample: --cfg ", o.cfg, " must be >= 0"));
  o.out = args.Get("out", run_dir + "/samples.png");
  const std::filesystem::path folder = std::filesystem::path(o.out).parent_path();
  std::error_code error;
  if (!folder.empty() && !std::filesystem::is_directory(folder, error)) {
    return UsageError(absl::StrCat("sample: --out ", o.out, ": folder ", folder.string(),
                                   " does not exist"));
  }
  return o;
}

// The run's config as sample uses it: one process, validated like train's.
absl::StatusOr<RunConfig> LoadSampleConfig(const std::string& run_dir) {
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(run_dir + "/config.textproto"));
  config.clear_parallel();  // sample builds the single-process model
  config.clear_fault();
  absl::Status valid = ValidateRun(config, 1);
  if (!valid.ok()) {
    return UsageError(absl::StrCat(run_dir, "/config.textproto: ", valid.message()));
  }
  if (!config.has_dit_moe()) {
    return UsageError(absl::StrCat("sample: ", run_dir, "/config.textproto trains model.",
                                   ModelFieldName(config),
                                   "; tessera sample draws DiT-MoE runs' images only"));
  }
  return config;
}

absl::Status Sample(const ParsedArguments& args) {
  TESSERA_RETURN_IF_ERROR(args.ExpectNoPositional("sample"));
  if (!args.Has("run")) return UsageError("sample: --run RUN_DIR is required (see --help)");
  const std::string run_dir = args.Get("run");
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadSampleConfig(run_dir));
  TESSERA_ASSIGN_OR_RETURN(const SampleOptions o, ParseSampleOptions(args, config, run_dir));
  TESSERA_RETURN_IF_ERROR(
      CheckSamplingMemoryFits(config, o.per_class * config.dit_moe().num_classes()));
  config.mutable_train()->set_threads(static_cast<int>(o.threads));
  ConfigureThreads(config);
  TESSERA_RETURN_IF_ERROR(ConfigurePrecision(config, HostBackend()));
  TESSERA_ASSIGN_OR_RETURN(auto built, dit_moe::DitMoeModel::Build(config));
  TESSERA_RETURN_IF_ERROR(LoadWeights(run_dir + "/weights.h5", built->store()));
  TESSERA_RETURN_IF_ERROR(dit_moe::WriteSampleGrid(built->model(), config, o.out,
                                          static_cast<int>(o.per_class),
                                          static_cast<int>(o.steps), static_cast<float>(o.cfg),
                                          static_cast<uint64_t>(o.seed)));
  std::printf("wrote %s\n", o.out.c_str());
  return absl::OkStatus();
}
}  // namespace

int SampleCommand(const std::vector<std::string>& raw) {
  auto args = ParseArguments(raw, {"run", "out", "per-class", "steps", "cfg", "seed", "threads"},
                             {"help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help")) {
    std::fputs(kSampleUsage, stdout);
    return 0;
  }
  const absl::Status status = Sample(*args);
  return status.ok() ? 0 : ReportError(status);
}

}  // namespace tessera
