// tessera generate: continues a prompt with a trained Mamba hybrid run's
// weights, greedily, in the recurrent form (or, with --mode reforward, by
// re-running the whole sequence for every token: the oracle the recurrent
// form is tested against).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "launch/model_setup.h"
#include "models/mamba_hybrid/family.h"
#include "models/mamba_hybrid/generation.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {

constexpr char kGenerateUsage[] = R"(usage: tessera generate --run RUN_DIR --prompt TEXT [options]

Continues a prompt with the weights a Mamba hybrid training run saved
(RUN_DIR/weights.h5, model in RUN_DIR/config.textproto), choosing the most
likely token each time. The prompt's bytes are its tokens (byte-level
models: vocabulary 257, 256 = end of document); --prompt-ids gives token ids
instead. Generation stops after --tokens tokens or at the end-of-document
token (the vocabulary's last id). Prints the continuation (bytes as text
with --prompt, ids otherwise).

  --run DIR          a training run directory (train.run_dir)
  --prompt TEXT      the prompt as bytes
  --prompt-ids LIST  the prompt as comma-separated token ids
  --tokens N         tokens to generate, 1 to 100000 (default 200)
  --mode M           recurrent (default: Mamba states and a key/value cache)
                     or reforward (the whole sequence again for every token)
  --threads N        CPU threads, 0 to 1024 (default 0: all cores)
Errors exit 2 (usage), 4 (weights).
)";

absl::StatusOr<RunConfig> LoadGenerateConfig(const std::string& run_dir) {
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(run_dir + "/config.textproto"));
  config.clear_parallel();  // generation builds the single-process model
  config.clear_fault();
  absl::Status valid = ValidateRun(config, 1);
  if (!valid.ok()) return UsageError(absl::StrCat(run_dir, "/config.textproto: ", valid.message()));
  if (!config.has_mamba_hybrid()) {
    return UsageError(absl::StrCat("generate: ", run_dir, "/config.textproto trains model.",
                                   ModelFieldName(config),
                                   "; tessera generate continues Mamba hybrid runs only"));
  }
  return config;
}

// The prompt's tokens, each checked against the vocabulary.
absl::StatusOr<std::vector<int32_t>> PromptTokens(const ParsedArguments& args, int64_t vocab) {
  std::vector<int32_t> tokens;
  if (args.Has("prompt") == args.Has("prompt-ids")) {
    return UsageError("generate: give exactly one of --prompt TEXT and --prompt-ids LIST");
  }
  if (args.Has("prompt")) {
    for (unsigned char byte : args.Get("prompt")) tokens.push_back(byte);
  } else {
    for (absl::string_view piece : absl::StrSplit(args.Get("prompt-ids"), ',')) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(piece, &id)) {
        return UsageError(absl::StrCat("generate: --prompt-ids: \"", piece, "\" is not a token id"));
      }
      tokens.push_back(id);
    }
  }
  if (tokens.empty()) return UsageError("generate: the prompt is empty");
  for (int32_t id : tokens) {
    if (id < 0 || id >= vocab) {
      return UsageError(absl::StrCat("generate: prompt token ", id,
                                     " lies outside the model's vocabulary [0, ", vocab,
                                     ") (model.mamba_hybrid.vocab_size)"));
    }
  }
  return tokens;
}

absl::Status Generate(const ParsedArguments& args) {
  TESSERA_RETURN_IF_ERROR(args.ExpectNoPositional("generate"));
  if (!args.Has("run")) return UsageError("generate: --run RUN_DIR is required (see --help)");
  const std::string run_dir = args.Get("run");
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadGenerateConfig(run_dir));
  const int64_t vocab = config.mamba_hybrid().vocab_size();
  TESSERA_ASSIGN_OR_RETURN(const std::vector<int32_t> prompt, PromptTokens(args, vocab));
  TESSERA_ASSIGN_OR_RETURN(const int64_t count, args.GetIntInRange("tokens", 200, 1, 100000));
  TESSERA_ASSIGN_OR_RETURN(const int64_t threads, args.GetIntInRange("threads", 0, 0, 1024));
  const std::string mode = args.Get("mode", "recurrent");
  if (mode != "recurrent" && mode != "reforward") {
    return UsageError(absl::StrCat("generate: --mode ", mode, " is unknown (recurrent, reforward)"));
  }
  config.mutable_train()->set_threads(static_cast<int>(threads));
  ConfigureThreads(config);
  TESSERA_RETURN_IF_ERROR(ConfigurePrecision(config, HostBackend()));
  TESSERA_ASSIGN_OR_RETURN(auto built, mamba_hybrid::MambaHybridModel::Build(config));
  TESSERA_RETURN_IF_ERROR(LoadWeights(run_dir + "/weights.h5", built->store()));
  TESSERA_ASSIGN_OR_RETURN(
      const std::vector<int32_t> tokens,
      mamba_hybrid::GenerateGreedy(built->model(), prompt, count, static_cast<int32_t>(vocab - 1),
                                   mode == "recurrent" ? mamba_hybrid::GenerationMode::kRecurrent
                                                       : mamba_hybrid::GenerationMode::kReforward));
  if (args.Has("prompt")) {
    std::string text;
    for (int32_t id : tokens)
      if (id < 256) text.push_back(static_cast<char>(id));
    std::printf("%s\n", text.c_str());
  } else {
    std::printf("%s\n", absl::StrJoin(tokens, ",").c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int GenerateCommand(const std::vector<std::string>& raw) {
  auto args =
      ParseArguments(raw, {"run", "prompt", "prompt-ids", "tokens", "mode", "threads"}, {"help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help")) {
    std::fputs(kGenerateUsage, stdout);
    return 0;
  }
  const absl::Status status = Generate(*args);
  return status.ok() ? 0 : ReportError(status);
}

}  // namespace tessera
