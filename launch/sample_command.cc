// tessera sample: class-conditional images from a finished training run.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "launch/model_setup.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {
constexpr char kSampleUsage[] = R"(usage: tessera sample --run RUN_DIR [options]

Generates a grid of images, one row per class, with the weights a training
run saved (RUN_DIR/weights.h5) and the model in RUN_DIR/config.textproto.

  --run DIR          a training run directory (train.run_dir)
  --out FILE         PNG to write (default RUN_DIR/samples.png)
  --per-class N      images per class (default 8)
  --steps N          sampler steps (default model.dit_moe.sample_steps)
  --cfg S            classifier-free guidance scale (default model.dit_moe.cfg_scale)
  --seed N           noise seed (default 0)
  --threads N        CPU threads (default: all cores)
)";

absl::Status Sample(const ParsedArguments& args) {
  if (!args.Has("run")) return UsageError("sample: --run RUN_DIR is required (see --help)");
  const std::string run_dir = args.Get("run");
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(run_dir + "/config.textproto"));
  TESSERA_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  config.mutable_train()->set_threads(static_cast<int>(threads));
  ConfigureThreads(config);
  TESSERA_ASSIGN_OR_RETURN(BuiltModel built, BuildModel(config));
  TESSERA_RETURN_IF_ERROR(LoadWeights(run_dir + "/weights.h5", *built.store));
  const DitMoeConfig& m = config.dit_moe();
  TESSERA_ASSIGN_OR_RETURN(int64_t per_class, args.GetInt("per-class", 8));
  TESSERA_ASSIGN_OR_RETURN(int64_t steps, args.GetInt("steps", m.sample_steps()));
  TESSERA_ASSIGN_OR_RETURN(double cfg, args.GetDouble("cfg", m.cfg_scale()));
  TESSERA_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  if (per_class < 1 || steps < 1 || cfg < 0) {
    return UsageError("sample: --per-class and --steps must be >= 1 and --cfg >= 0");
  }
  const std::string out = args.Get("out", run_dir + "/samples.png");
  TESSERA_RETURN_IF_ERROR(WriteSampleGrid(*built.model, config, out, static_cast<int>(per_class),
                                          static_cast<int>(steps), static_cast<float>(cfg),
                                          static_cast<uint64_t>(seed)));
  std::printf("wrote %s\n", out.c_str());
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
