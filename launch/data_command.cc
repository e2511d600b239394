// tessera data: turn real data into HDF5 shards, make synthetic data, verify.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "data/fashion_mnist.h"
#include "data/manifest.h"
#include "data/synthetic_images.h"
#include "data/synthetic_interactions.h"
#include "data/synthetic_tokens.h"
#include "data/text_import.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "launch/movielens_command.h"
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

  import-text --out DIR [--eval-fraction F] [--seed N] [--shard-size N] PATH...
      Plain-text files (folders: every regular file in them, binary files
      skipped) -> OUT/train and OUT/eval, tokens data sets of bytes (vocabulary
      257, end of document 256). Documents end at blank lines, or at lines
      holding only "%" in fortune files. Each document goes to eval with
      probability F (default 0.05).

  synth --schema images --out DIR [--samples N] [--channels C] [--size S]
        [--classes K] [--seed N] [--shard-size N]
      Synthetic class-dependent images (defaults: 1024 samples, 1 channel,
      28x28, 10 classes).

  synth --schema tokens --out DIR [--samples N] [--vocab V] [--branching B]
        [--min-length L] [--max-length L] [--seed N] [--shard-size N]
      A Markov toy language: N documents (default 1024), vocabulary V
      (default 64, the last id ends documents), B successors per token
      (default 4: the best loss is ln B), lengths in [L, L] (16, 256).

  synth --schema tokens --task associative-recall --out DIR [--samples N]
        [--pairs P] [--queries Q] [--keys K] [--values V] [--seed N]
      Multi-query associative recall: P key-value pairs (default 8), then Q
      queried keys (default P) each followed by its value; loss_mask marks
      the answers. Train with seq_len 2P+2Q+1 (the manifest's seq_len).

  synth --schema interactions --out DIR [--samples N] [--items I]
        [--clusters C] [--min-length L] [--max-length L] [--seed N]
        [--shard-size N]
      N users (default 1000) following C hidden item clusters (default 10)
      over I items (default 1000), histories of L to L events (5, 50), with
      timestamps and ratings.

  import-movielens --input FILE --out DIR [--format auto|dat|csv]
        [--min-events N] [--shard-size N]
      MovieLens ratings (ML-1M ratings.dat, ML-20M / ml-latest ratings.csv,
      the dslabs export) -> an interactions data set: each user's ratings by
      time, movie ids numbered densely (OUT/item_ids.txt maps them back),
      users with fewer than N ratings dropped (default 2). Train with
      model.hstu.num_items set to the printed number of items.

  verify DIR
      Checks a data folder: manifest, every shard's checksum, schema, sizes
      and values (labels, token ids, item ids, timestamp order). Exit 0 when
      intact, 3 naming the first problem otherwise.

See docs/data-format.md for the formats and every limit.
)";

// Limits on what a command line may ask for, checked before anything is
// allocated (docs/data-format.md, "Limits").
constexpr int64_t kMaxSamples = 10000000;
constexpr int64_t kMaxLength = int64_t{1} << 20;
constexpr int64_t kMaxSynthBytes = int64_t{4} << 30;  // data a synth command may write

// The integer option --`name` (default `fallback`), which must lie in [low, high].
absl::StatusOr<int64_t> BoundedInt(const ParsedArguments& args, const std::string& name,
                                   int64_t fallback, int64_t low, int64_t high) {
  TESSERA_ASSIGN_OR_RETURN(int64_t value, args.GetInt(name, fallback));
  if (value < low || value > high) {
    return UsageError(
        absl::StrCat("data: --", name, " ", value, " is outside [", low, ", ", high, "]"));
  }
  return value;
}

// `a` × `b` bytes, refused when above kMaxSynthBytes (a and b are bounded, so
// the product cannot overflow).
absl::Status CheckSynthSize(int64_t a, int64_t b, absl::string_view what) {
  if (a * b <= kMaxSynthBytes) return absl::OkStatus();
  return UsageError(absl::StrCat("data synth: ", what, " = ", a * b, " bytes exceeds the limit of ",
                                 kMaxSynthBytes, " (4 GiB)"));
}

absl::Status SynthImages(const ParsedArguments& args, const std::string& out) {
  TESSERA_ASSIGN_OR_RETURN(int64_t samples, BoundedInt(args, "samples", 1024, 0, kMaxSamples));
  TESSERA_ASSIGN_OR_RETURN(int64_t channels, BoundedInt(args, "channels", 1, 1, 64));
  TESSERA_ASSIGN_OR_RETURN(int64_t size, BoundedInt(args, "size", 28, 1, 4096));
  TESSERA_ASSIGN_OR_RETURN(int64_t classes, BoundedInt(args, "classes", 10, 1, 1 << 20));
  TESSERA_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  TESSERA_ASSIGN_OR_RETURN(int64_t shard, BoundedInt(args, "shard-size", 10000, 1, kMaxSamples));
  TESSERA_RETURN_IF_ERROR(
      CheckSynthSize(samples, channels * size * size, "--samples x --channels x --size^2"));
  TESSERA_RETURN_IF_ERROR(SynthesizeImages(
      out, samples, static_cast<int>(channels), static_cast<int>(size), static_cast<int>(size),
      static_cast<int>(classes), static_cast<uint64_t>(seed), shard));
  std::printf("wrote %lld synthetic images to %s\n", static_cast<long long>(samples), out.c_str());
  return absl::OkStatus();
}

absl::Status SynthRecall(const ParsedArguments& args, const std::string& out) {
  AssociativeRecallSpec spec;
  TESSERA_ASSIGN_OR_RETURN(spec.num_documents, BoundedInt(args, "samples", 1024, 0, kMaxSamples));
  TESSERA_ASSIGN_OR_RETURN(spec.pairs, BoundedInt(args, "pairs", 8, 1, 4096));
  TESSERA_ASSIGN_OR_RETURN(spec.queries, BoundedInt(args, "queries", spec.pairs, 1, spec.pairs));
  TESSERA_ASSIGN_OR_RETURN(
      spec.num_keys,
      BoundedInt(args, "keys", std::max<int64_t>(32, spec.pairs), spec.pairs, 1 << 20));
  TESSERA_ASSIGN_OR_RETURN(spec.num_values, BoundedInt(args, "values", 32, 1, 1 << 20));
  TESSERA_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  spec.seed = static_cast<uint64_t>(seed);
  TESSERA_ASSIGN_OR_RETURN(spec.documents_per_shard,
                           BoundedInt(args, "shard-size", 10000, 1, kMaxSamples));
  TESSERA_RETURN_IF_ERROR(CheckSynthSize(spec.num_documents,
                                         5 * (2 * spec.pairs + 2 * spec.queries),
                                         "--samples x 5 x (2 --pairs + 2 --queries)"));
  TESSERA_RETURN_IF_ERROR(SynthesizeAssociativeRecall(out, spec));
  std::printf("wrote %lld associative-recall documents to %s (train with seq_len %lld)\n",
              static_cast<long long>(spec.num_documents), out.c_str(),
              static_cast<long long>(2 * spec.pairs + 2 * spec.queries + 1));
  return absl::OkStatus();
}

absl::Status SynthTokens(const ParsedArguments& args, const std::string& out) {
  const std::string task = args.Get("task", "markov");
  if (task == "associative-recall") return SynthRecall(args, out);
  if (task != "markov") {
    return UsageError(absl::StrCat("data synth: --task ", task,
                                   " is unknown (tokens: markov, associative-recall)"));
  }
  MarkovLanguageSpec spec;
  TESSERA_ASSIGN_OR_RETURN(spec.num_documents, BoundedInt(args, "samples", 1024, 0, kMaxSamples));
  TESSERA_ASSIGN_OR_RETURN(spec.vocab_size, BoundedInt(args, "vocab", 64, 2, 1 << 16));
  TESSERA_ASSIGN_OR_RETURN(spec.branching, BoundedInt(args, "branching", 4, 1,
                                                      std::min<int64_t>(64, spec.vocab_size - 1)));
  TESSERA_ASSIGN_OR_RETURN(spec.min_length, BoundedInt(args, "min-length", 16, 1, kMaxLength));
  TESSERA_ASSIGN_OR_RETURN(spec.max_length,
                           BoundedInt(args, "max-length", std::max<int64_t>(256, spec.min_length),
                                      spec.min_length, kMaxLength));
  TESSERA_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  spec.seed = static_cast<uint64_t>(seed);
  TESSERA_ASSIGN_OR_RETURN(spec.documents_per_shard,
                           BoundedInt(args, "shard-size", 10000, 1, kMaxSamples));
  TESSERA_RETURN_IF_ERROR(
      CheckSynthSize(spec.num_documents, 5 * spec.max_length, "--samples x 5 x --max-length"));
  TESSERA_RETURN_IF_ERROR(SynthesizeMarkovLanguage(out, spec));
  std::printf("wrote %lld synthetic documents to %s\n", static_cast<long long>(spec.num_documents),
              out.c_str());
  return absl::OkStatus();
}

absl::Status SynthInteractions(const ParsedArguments& args, const std::string& out) {
  ClusteredInteractionsSpec spec;
  TESSERA_ASSIGN_OR_RETURN(spec.num_users, BoundedInt(args, "samples", 1000, 0, kMaxSamples));
  TESSERA_ASSIGN_OR_RETURN(spec.num_items, BoundedInt(args, "items", 1000, 1, int64_t{1} << 31));
  TESSERA_ASSIGN_OR_RETURN(
      spec.num_clusters,
      BoundedInt(args, "clusters", std::min<int64_t>(10, spec.num_items), 1, spec.num_items));
  TESSERA_ASSIGN_OR_RETURN(spec.min_length, BoundedInt(args, "min-length", 5, 1, kMaxLength));
  TESSERA_ASSIGN_OR_RETURN(spec.max_length,
                           BoundedInt(args, "max-length", std::max<int64_t>(50, spec.min_length),
                                      spec.min_length, kMaxLength));
  TESSERA_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  spec.seed = static_cast<uint64_t>(seed);
  TESSERA_ASSIGN_OR_RETURN(spec.users_per_shard,
                           BoundedInt(args, "shard-size", 10000, 1, kMaxSamples));
  TESSERA_RETURN_IF_ERROR(
      CheckSynthSize(spec.num_users, 20 * spec.max_length, "--samples x 20 x --max-length"));
  TESSERA_RETURN_IF_ERROR(SynthesizeInteractions(out, spec));
  std::printf("wrote %lld synthetic user histories to %s\n", static_cast<long long>(spec.num_users),
              out.c_str());
  return absl::OkStatus();
}

absl::Status Synth(const ParsedArguments& args) {
  if (!args.Has("out")) return UsageError("data synth: --out DIR is required");
  if (!args.positional.empty()) {
    return UsageError(absl::StrCat("data synth: unexpected argument \"", args.positional[0], "\""));
  }
  const std::string schema = args.Get("schema", "images");
  const std::string out = args.Get("out");
  if (args.Has("task") && schema != "tokens") {
    return UsageError("data synth: --task is for --schema tokens");
  }
  if (schema == "images") return SynthImages(args, out);
  if (schema == "tokens") return SynthTokens(args, out);
  if (schema == "interactions") return SynthInteractions(args, out);
  return UsageError(
      absl::StrCat("data synth: --schema ", schema, " is unknown (images, tokens, interactions)"));
}

absl::Status ImportText(const ParsedArguments& args) {
  if (!args.Has("out")) return UsageError("data import-text: --out DIR is required");
  if (args.positional.empty()) {
    return UsageError("data import-text: name at least one text file or folder");
  }
  TextImportOptions options;
  options.out_dir = args.Get("out");
  options.inputs = args.positional;
  TESSERA_ASSIGN_OR_RETURN(options.eval_fraction, args.GetDouble("eval-fraction", 0.05));
  if (!(options.eval_fraction >= 0 && options.eval_fraction < 1)) {
    return UsageError(absl::StrCat("data import-text: --eval-fraction ", args.Get("eval-fraction"),
                                   " is outside [0, 1)"));
  }
  TESSERA_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  options.seed = static_cast<uint64_t>(seed);
  TESSERA_ASSIGN_OR_RETURN(options.documents_per_shard,
                           BoundedInt(args, "shard-size", 10000, 1, kMaxSamples));
  TESSERA_ASSIGN_OR_RETURN(TextImportSummary summary, ImportText(options));
  std::printf(
      "imported %lld files (%lld skipped as binary): %lld documents, %lld bytes -> %s/train "
      "(%lld documents), %s/eval (%lld)\n",
      static_cast<long long>(summary.files), static_cast<long long>(summary.skipped_files),
      static_cast<long long>(summary.train_documents + summary.eval_documents),
      static_cast<long long>(summary.bytes), options.out_dir.c_str(),
      static_cast<long long>(summary.train_documents), options.out_dir.c_str(),
      static_cast<long long>(summary.eval_documents));
  return absl::OkStatus();
}

absl::Status Run(const std::string& sub, const ParsedArguments& args) {
  if (sub == "import-fashion-mnist") {
    const std::string source = args.Get("source", kFashionMnistSystemDir);
    const std::string out = args.Get("out", "data/fashion-mnist");
    TESSERA_ASSIGN_OR_RETURN(int64_t shard, BoundedInt(args, "shard-size", 10000, 1, kMaxSamples));
    TESSERA_RETURN_IF_ERROR(ImportFashionMnist(source, out, shard));
    std::printf("imported %s -> %s/train, %s/test\n", source.c_str(), out.c_str(), out.c_str());
    return absl::OkStatus();
  }
  if (sub == "import-text") return ImportText(args);
  if (sub == "import-movielens") return ImportMovieLensCommand(args);
  if (sub == "synth") return Synth(args);
  if (sub == "verify") {
    if (args.positional.size() != 1) return UsageError("data verify: expected one DIR");
    TESSERA_RETURN_IF_ERROR(VerifyDataset(args.positional[0]));
    std::printf("%s: ok\n", args.positional[0].c_str());
    return absl::OkStatus();
  }
  return UsageError(
      absl::StrCat("data: unknown subcommand \"", sub, "\" (see tessera data --help)"));
}
}  // namespace

int DataCommand(const std::vector<std::string>& raw) {
  if (raw.empty() || raw[0] == "--help" || raw[0] == "-h") {
    std::fputs(kDataUsage, raw.empty() ? stderr : stdout);
    return raw.empty() ? 2 : 0;
  }
  const std::string sub = raw[0];
  auto args = ParseArguments(
      {raw.begin() + 1, raw.end()},
      {"source",  "out",     "shard-size", "schema", "samples",   "channels",   "size",
       "classes", "seed",    "task",       "vocab",  "branching", "min-length", "max-length",
       "pairs",   "queries", "keys",       "values", "items",     "clusters",   "eval-fraction",
       "input",   "format",  "min-events"},
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
