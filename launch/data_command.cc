// tessera data: turn real data into HDF5 shards, make synthetic data, verify.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "data/fashion_mnist.h"
#include "data/manifest.h"
#include "data/synthetic_images.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {
constexpr char kDataUsage[] = R"(usage: tessera data <subcommand> [options]

  import-fashion-mnist [--source DIR] [--out DIR] [--shard-size N]
      IDX files (Debian package dataset-fashion-mnist, default source
      /usr/share/datasets/fashion-mnist) -> OUT/train and OUT/test, each a
      folder of HDF5 shards with manifest.textproto (default OUT
      data/fashion-mnist, 10000 samples per shard).

  synth --schema images --out DIR [--samples N] [--channels C] [--size S]
        [--classes K] [--seed N] [--shard-size N]
      Synthetic class-dependent images for tests and benchmarks
      (defaults: 1024 samples, 1 channel, 28x28, 10 classes).

  verify DIR
      Checks a data folder: manifest, every shard's checksum, schema and
      sample count. Exit 0 when intact, 3 naming the first problem otherwise.

See docs/data-format.md for the formats.
)";

absl::Status Run(const std::string& sub, const ParsedArguments& args) {
  if (sub == "import-fashion-mnist") {
    const std::string source = args.Get("source", kFashionMnistSystemDir);
    const std::string out = args.Get("out", "data/fashion-mnist");
    TESSERA_ASSIGN_OR_RETURN(int64_t shard, args.GetInt("shard-size", 10000));
    TESSERA_RETURN_IF_ERROR(ImportFashionMnist(source, out, shard));
    std::printf("imported %s -> %s/train, %s/test\n", source.c_str(), out.c_str(), out.c_str());
    return absl::OkStatus();
  }
  if (sub == "synth") {
    const std::string schema = args.Get("schema", "images");
    if (schema != "images") {
      return UsageError(absl::StrCat("data synth: --schema ", schema,
                                     " has no generator yet (available: images)"));
    }
    if (!args.Has("out")) return UsageError("data synth: --out DIR is required");
    TESSERA_ASSIGN_OR_RETURN(int64_t samples, args.GetInt("samples", 1024));
    TESSERA_ASSIGN_OR_RETURN(int64_t channels, args.GetInt("channels", 1));
    TESSERA_ASSIGN_OR_RETURN(int64_t size, args.GetInt("size", 28));
    TESSERA_ASSIGN_OR_RETURN(int64_t classes, args.GetInt("classes", 10));
    TESSERA_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
    TESSERA_ASSIGN_OR_RETURN(int64_t shard, args.GetInt("shard-size", 10000));
    TESSERA_RETURN_IF_ERROR(SynthesizeImages(args.Get("out"), samples, static_cast<int>(channels),
                                             static_cast<int>(size), static_cast<int>(size),
                                             static_cast<int>(classes),
                                             static_cast<uint64_t>(seed), shard));
    std::printf("wrote %lld synthetic images to %s\n", static_cast<long long>(samples),
                args.Get("out").c_str());
    return absl::OkStatus();
  }
  if (sub == "verify") {
    if (args.positional.size() != 1) return UsageError("data verify: expected one DIR");
    TESSERA_RETURN_IF_ERROR(VerifyDataset(args.positional[0]));
    std::printf("%s: ok\n", args.positional[0].c_str());
    return absl::OkStatus();
  }
  return UsageError(absl::StrCat("data: unknown subcommand \"", sub, "\" (see tessera data --help)"));
}
}  // namespace

int DataCommand(const std::vector<std::string>& raw) {
  if (raw.empty() || raw[0] == "--help" || raw[0] == "-h") {
    std::fputs(kDataUsage, raw.empty() ? stderr : stdout);
    return raw.empty() ? 2 : 0;
  }
  const std::string sub = raw[0];
  auto args = ParseArguments({raw.begin() + 1, raw.end()},
                             {"source", "out", "shard-size", "schema", "samples", "channels",
                              "size", "classes", "seed"},
                             {"help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help")) {
    std::fputs(kDataUsage, stdout);
    return 0;
  }
  const absl::Status status = Run(sub, *args);
  return status.ok() ? 0 : ReportError(status);
}

}  // namespace tessera
