// tessera ckpt: inspect, verify, compare and export sharded checkpoints
// (docs/checkpoints.md). Single-process, no MPI; the work is in
// runtime/checkpoint/checkpoint_tools.h, this file only formats it.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <map>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "runtime/base/errors.h"
#include "runtime/base/human_units.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/checkpoint_tools.h"

namespace tessera {
namespace {
constexpr char kCkptUsage[] = R"(usage: tessera ckpt <subcommand> [options]

CKPT is a checkpoint directory (RUN_DIR/checkpoints/step_N) or a run
directory (then its latest committed checkpoint).

  list RUN_DIR            every step directory: committed, incomplete, superseded
                          or unparseable (a name not step_N), size, latest
  show CKPT               config, mesh, step, data position and the tensor table
  stats CKPT [--match RE] min, max, mean, std, L2 norm, NaN/Inf counts of each
                          assembled global tensor (RE: std::regex searched in
                          "kind/name")
  verify CKPT             rank files, datasets and checksums present and right,
                          every tensor covered exactly once; exit 4 if not
  diff A B                per tensor max abs and max relative difference (exit 0)
  export CKPT --out FILE [--dtype f32|bf16] [--weights-only]
                          one HDF5 file of full tensors; --weights-only writes
                          kind=param only, as a weights file `tessera sample`
                          reads (f32)

Every subcommand takes --json for machine-readable output on stdout.
)";

std::string Json(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<int>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// JSON has no NaN/Infinity: null.
std::string JsonNumber(double v) {
  return std::isfinite(v) ? absl::StrFormat("%.9g", v) : std::string("null");
}

std::vector<int64_t> Shape(const CheckpointTensor& t) {
  return {t.global_shape().begin(), t.global_shape().end()};
}

const char* ListingState(const CheckpointListing& l) {
  if (l.unparseable) return "unparseable";
  if (l.superseded) return "superseded";
  return l.committed ? "committed" : "incomplete";
}

absl::Status List(const ParsedArguments& args, bool json) {
  if (args.positional.size() != 2) return UsageError("ckpt list: expected one RUN_DIR");
  const std::string& run_dir = args.positional[1];
  TESSERA_ASSIGN_OR_RETURN(std::vector<CheckpointListing> listings, ListCheckpoints(run_dir));
  if (json) {
    std::vector<std::string> items;
    for (const auto& l : listings) {
      items.push_back(absl::StrFormat(
          R"({"name": %s, "path": %s, "step": %s, "state": %s, "committed": %s, "latest": %s, "bytes": %d})",
          Json(l.name), Json(l.path), l.unparseable ? "null" : absl::StrCat(l.step),
          Json(ListingState(l)), l.committed ? "true" : "false", l.latest ? "true" : "false",
          l.bytes));
    }
    absl::PrintF("{\"run_dir\": %s, \"checkpoints\": [%s]}\n", Json(run_dir).c_str(),
                 absl::StrJoin(items, ", ").c_str());
    return absl::OkStatus();
  }
  absl::PrintF("%-10s %-22s %-11s %12s\n", "step", "directory", "state", "size");
  for (const auto& l : listings) {
    absl::PrintF("%-10s %-22s %-11s %12s%s\n", l.unparseable ? "-" : absl::StrCat(l.step),
                 l.name.c_str(), ListingState(l), HumanBytes(l.bytes).c_str(),
                 l.latest ? "  <- latest" : "");
  }
  if (listings.empty()) absl::PrintF("(no checkpoints)\n");
  return absl::OkStatus();
}

absl::Status Show(const std::string& dir, bool json) {
  TESSERA_ASSIGN_OR_RETURN(CheckpointManifest m, ReadCheckpointManifest(dir));
  const CheckpointMesh& mesh = m.mesh();
  if (json) {
    std::vector<std::string> tensors;
    for (const CheckpointTensor& t : m.tensors()) {
      tensors.push_back(absl::StrFormat(
          R"({"name": %s, "kind": %s, "shape": [%s], "dtype": %s, "pieces": %d, "bytes": %d})",
          Json(t.name()), Json(t.kind()), absl::StrJoin(Shape(t), ", "), Json(t.dtype()),
          t.pieces_size(), NumElements(Shape(t)) * 4));
    }
    std::vector<std::string> extras;
    for (const auto& [k, v] : m.extras()) extras.push_back(absl::StrCat(Json(k), ": ", Json(v)));
    absl::PrintF(
        "{\"path\": %s, \"format_version\": %d, \"step\": %d, \"samples_seen\": %d, "
        "\"tokens_seen\": %d, \"sampler\": {\"epoch\": %d, \"position\": %d}, "
        "\"optimizer_step\": %d, \"mesh\": {\"world\": %d, \"tp\": %d, \"sp\": %d, \"dp\": %d, "
        "\"ep\": %d, \"etp\": %d, \"edp\": %d, \"zero_stage\": %d}, \"num_ranks\": %d, "
        "\"created_unix_seconds\": %d, \"extras\": {%s}, \"run_config\": %s, \"tensors\": [%s]}\n",
        Json(dir).c_str(), m.format_version(), m.step(), m.samples_seen(), m.tokens_seen(),
        m.sampler_epoch(), m.sampler_position(), m.optimizer_step(), mesh.world(), mesh.tp(),
        mesh.sp(), mesh.dp(), mesh.ep(), mesh.etp(), mesh.edp(), mesh.zero_stage(), m.num_ranks(),
        m.created_unix_seconds(), absl::StrJoin(extras, ", ").c_str(), Json(m.run_config()).c_str(),
        absl::StrJoin(tensors, ", ").c_str());
    return absl::OkStatus();
  }
  absl::PrintF("checkpoint   %s (format %d)\n", dir.c_str(), m.format_version());
  absl::PrintF("step         %" PRId64 " (optimizer step %" PRId64 ")\n", m.step(),
               m.optimizer_step());
  absl::PrintF("data         %" PRId64 " samples, %" PRId64 " tokens; sampler epoch %" PRId64
               ", position %" PRId64 "\n",
               m.samples_seen(), m.tokens_seen(), m.sampler_epoch(), m.sampler_position());
  absl::PrintF(
      "mesh         world %d = tp %d x sp %d x dp %d; ep %d, etp %d, edp %d; ZeRO %d; "
      "%d rank files\n",
      mesh.world(), mesh.tp(), mesh.sp(), mesh.dp(), mesh.ep(), mesh.etp(), mesh.edp(),
      mesh.zero_stage(), m.num_ranks());
  for (const auto& [k, v] : m.extras())
    absl::PrintF("extra        %s = %s\n", k.c_str(), v.c_str());
  if (!m.run_config().empty()) {
    absl::PrintF("config:\n");
    for (absl::string_view line : absl::StrSplit(m.run_config(), '\n')) {
      if (!line.empty()) absl::PrintF("  %s\n", std::string(line).c_str());
    }
  }
  absl::PrintF("\n%-40s %-8s %-16s %-8s %6s %12s\n", "tensor", "kind", "shape", "dtype", "pieces",
               "bytes");
  int64_t total = 0;
  for (const CheckpointTensor& t : m.tensors()) {
    const int64_t bytes = NumElements(Shape(t)) * 4;
    total += bytes;
    absl::PrintF("%-40s %-8s %-16s %-8s %6d %12s\n", t.name().c_str(), t.kind().c_str(),
                 ShapeString(Shape(t)).c_str(), t.dtype().c_str(), t.pieces_size(),
                 HumanBytes(bytes).c_str());
  }
  absl::PrintF("%d tensors, %s\n", m.tensors_size(), HumanBytes(total).c_str());
  return absl::OkStatus();
}

absl::Status Stats(const std::string& dir, const ParsedArguments& args, bool json) {
  TESSERA_ASSIGN_OR_RETURN(CheckpointManifest m, ReadCheckpointManifest(dir));
  std::regex pattern;
  try {
    pattern = std::regex(args.Get("match", ""));
  } catch (const std::regex_error& e) {
    return UsageError(absl::StrCat("ckpt stats: --match ", args.Get("match"), ": ", e.what()));
  }
  std::vector<std::string> items;
  if (!json) {
    absl::PrintF("%-40s %-8s %12s %12s %12s %12s %12s %6s %6s\n", "tensor", "kind", "min", "max",
                 "mean", "std", "l2", "nan", "inf");
  }
  for (const CheckpointTensor& t : m.tensors()) {
    if (!std::regex_search(absl::StrCat(t.kind(), "/", t.name()), pattern)) continue;
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> values, ReadGlobalTensor(dir, m, t));
    const TensorStats s = ComputeTensorStats(values);
    if (json) {
      items.push_back(absl::StrFormat(
          R"({"name": %s, "kind": %s, "count": %d, "min": %s, "max": %s, "mean": %s, "std": %s, "l2": %s, "nan": %d, "inf": %d})",
          Json(t.name()), Json(t.kind()), s.count, JsonNumber(s.min), JsonNumber(s.max),
          JsonNumber(s.mean), JsonNumber(s.std), JsonNumber(s.l2), s.nan, s.inf));
    } else {
      absl::PrintF("%-40s %-8s %12.5g %12.5g %12.5g %12.5g %12.5g %6" PRId64 " %6" PRId64 "\n",
                   t.name().c_str(), t.kind().c_str(), s.min, s.max, s.mean, s.std, s.l2, s.nan,
                   s.inf);
    }
  }
  if (json)
    absl::PrintF("{\"path\": %s, \"tensors\": [%s]}\n", Json(dir).c_str(),
                 absl::StrJoin(items, ", ").c_str());
  return absl::OkStatus();
}

absl::Status Verify(const std::string& dir, bool json) {
  TESSERA_ASSIGN_OR_RETURN(VerifyReport report, VerifyCheckpoint(dir));
  if (json) {
    std::vector<std::string> problems;
    for (const auto& p : report.problems) problems.push_back(Json(p));
    absl::PrintF(
        "{\"path\": %s, \"ok\": %s, \"tensors\": %d, \"pieces\": %d, \"bytes\": %d, "
        "\"problems\": [%s]}\n",
        Json(dir).c_str(), report.problems.empty() ? "true" : "false", report.tensors,
        report.pieces, report.bytes, absl::StrJoin(problems, ", ").c_str());
  }
  if (!report.problems.empty()) {
    if (!json) {
      for (const auto& p : report.problems) std::fprintf(stderr, "  %s\n", p.c_str());
    }
    return CheckpointError(absl::StrCat(dir, ": ", report.problems.size(),
                                        " problem(s); first: ", report.problems.front()));
  }
  if (!json) {
    absl::PrintF("%s: ok (%" PRId64 " tensors, %" PRId64 " pieces, %s of data)\n", dir.c_str(),
                 report.tensors, report.pieces, HumanBytes(report.bytes).c_str());
  }
  return absl::OkStatus();
}

absl::Status Diff(const std::string& a_dir, const std::string& b_dir, bool json) {
  TESSERA_ASSIGN_OR_RETURN(CheckpointManifest a, ReadCheckpointManifest(a_dir));
  TESSERA_ASSIGN_OR_RETURN(CheckpointManifest b, ReadCheckpointManifest(b_dir));
  std::map<std::pair<std::string, std::string>, const CheckpointTensor*> in_b;
  for (const CheckpointTensor& t : b.tensors()) in_b[{t.name(), t.kind()}] = &t;
  std::vector<std::string> items;
  int compared = 0, differing = 0, only_a = 0, mismatched = 0;
  double worst_abs = 0, worst_rel = 0;
  if (!json) {
    absl::PrintF("%-40s %-8s %14s %14s\n", "tensor", "kind", "max abs diff", "max rel diff");
  }
  auto row = [&](const CheckpointTensor& t, const std::string& note, const TensorDiff* d) {
    if (json) {
      items.push_back(absl::StrFormat(
          R"({"name": %s, "kind": %s, "status": %s, "max_abs": %s, "max_rel": %s})", Json(t.name()),
          Json(t.kind()), Json(note), d ? JsonNumber(d->max_abs) : "null",
          d ? JsonNumber(d->max_rel) : "null"));
    } else if (d) {
      absl::PrintF("%-40s %-8s %14.6g %14.6g\n", t.name().c_str(), t.kind().c_str(), d->max_abs,
                   d->max_rel);
    } else {
      absl::PrintF("%-40s %-8s %s\n", t.name().c_str(), t.kind().c_str(), note.c_str());
    }
  };
  for (const CheckpointTensor& t : a.tensors()) {
    auto it = in_b.find({t.name(), t.kind()});
    if (it == in_b.end()) {
      ++only_a;
      row(t, "only in A", nullptr);
      continue;
    }
    const CheckpointTensor& u = *it->second;
    in_b.erase(it);
    if (Shape(t) != Shape(u)) {
      ++mismatched;
      row(t, absl::StrCat("shape ", ShapeString(Shape(t)), " vs ", ShapeString(Shape(u))), nullptr);
      continue;
    }
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> x, ReadGlobalTensor(a_dir, a, t));
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> y, ReadGlobalTensor(b_dir, b, u));
    const TensorDiff d = DiffTensors(x, y);
    ++compared;
    if (d.max_abs > 0) ++differing;
    worst_abs = std::max(worst_abs, d.max_abs);
    worst_rel = std::max(worst_rel, d.max_rel);
    row(t, d.max_abs > 0 ? "differs" : "equal", &d);
  }
  for (const auto& [key, t] : in_b) row(*t, "only in B", nullptr);
  const std::string summary = absl::StrFormat(
      "%d tensors compared, %d differ (max abs %.6g, max rel %.6g); %d only in A, %d only in B, "
      "%d with different shapes",
      compared, differing, worst_abs, worst_rel, only_a, static_cast<int>(in_b.size()), mismatched);
  if (json) {
    absl::PrintF(
        "{\"a\": %s, \"b\": %s, \"tensors\": [%s], \"compared\": %d, \"differing\": %d, "
        "\"max_abs\": %s, \"max_rel\": %s, \"only_in_a\": %d, \"only_in_b\": %d, "
        "\"shape_mismatches\": %d, \"summary\": %s}\n",
        Json(a_dir).c_str(), Json(b_dir).c_str(), absl::StrJoin(items, ", ").c_str(), compared,
        differing, JsonNumber(worst_abs).c_str(), JsonNumber(worst_rel).c_str(), only_a,
        static_cast<int>(in_b.size()), mismatched, Json(summary).c_str());
  } else {
    absl::PrintF("%s\n", summary.c_str());
  }
  return absl::OkStatus();
}

absl::Status Export(const std::string& dir, const ParsedArguments& args, bool json) {
  if (!args.Has("out")) return UsageError("ckpt export: --out FILE is required");
  const std::string dtype = args.Get("dtype", "f32");
  if (dtype != "f32" && dtype != "bf16") {
    return UsageError(absl::StrCat("ckpt export: --dtype must be f32 or bf16, not ", dtype));
  }
  ExportOptions options;
  options.bf16 = dtype == "bf16";
  options.weights_only = args.flags.count("weights-only") > 0;
  TESSERA_RETURN_IF_ERROR(ExportCheckpoint(dir, args.Get("out"), options));
  if (json) {
    absl::PrintF("{\"path\": %s, \"out\": %s, \"dtype\": %s, \"weights_only\": %s}\n",
                 Json(dir).c_str(), Json(args.Get("out")).c_str(), Json(dtype).c_str(),
                 options.weights_only ? "true" : "false");
  } else {
    absl::PrintF("exported %s -> %s (%s%s)\n", dir.c_str(), args.Get("out").c_str(), dtype.c_str(),
                 options.weights_only ? ", weights only" : "");
  }
  return absl::OkStatus();
}

absl::Status Run(const ParsedArguments& args) {
  const std::string& sub = args.positional[0];
  const bool json = args.flags.count("json") > 0;
  if (sub == "list") return List(args, json);
  const size_t operands = sub == "diff" ? 2 : 1;
  if (sub != "show" && sub != "stats" && sub != "verify" && sub != "diff" && sub != "export") {
    return UsageError(
        absl::StrCat("ckpt: unknown subcommand \"", sub, "\" (see tessera ckpt --help)"));
  }
  if (args.positional.size() != operands + 1) {
    return UsageError(absl::StrCat("ckpt ", sub, ": expected ", operands == 2 ? "A B" : "CKPT"));
  }
  TESSERA_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(args.positional[1]));
  if (sub == "show") return Show(dir, json);
  if (sub == "stats") return Stats(dir, args, json);
  if (sub == "verify") return Verify(dir, json);
  if (sub == "export") return Export(dir, args, json);
  TESSERA_ASSIGN_OR_RETURN(std::string other, ResolveCheckpoint(args.positional[2]));
  return Diff(dir, other, json);
}
}  // namespace

int CkptCommand(const std::vector<std::string>& raw) {
  if (raw.empty() || raw[0] == "--help" || raw[0] == "-h") {
    std::fputs(kCkptUsage, raw.empty() ? stderr : stdout);
    return raw.empty() ? 2 : 0;
  }
  auto args = ParseArguments(raw, {"match", "out", "dtype"}, {"json", "weights-only", "help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help") || args->positional.empty()) {
    std::fputs(kCkptUsage, args->flags.count("help") ? stdout : stderr);
    return args->flags.count("help") ? 0 : 2;
  }
  const absl::Status status = Run(*args);
  return status.ok() ? 0 : ReportError(status);
}

}  // namespace tessera
