#include "data/manifest.h"

#include <sys/stat.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "data/file_util.h"
#include "data/value_checks.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

// Attributes each schema's manifest must carry, as positive integers.
std::vector<std::string> RequiredAttributes(absl::string_view schema) {
  if (schema == "images") return {"channels", "height", "width", "num_classes"};
  if (schema == "tokens") return {"vocab_size"};
  if (schema == "interactions") return {"num_items"};
  return {};
}

std::string ManifestPath(const std::string& dir) { return absl::StrCat(dir, "/", kManifestFile); }

absl::Status ManifestError(const std::string& dir, absl::string_view message) {
  return DataError(absl::StrCat(ManifestPath(dir), ": ", message));
}

class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (error.empty()) error = absl::StrCat("line ", line + 1, ":", column + 1, ": ", message);
  }
  std::string error;
};

// A shard path must stay inside the data set's folder.
bool IsPlainRelativePath(absl::string_view path) {
  if (path.empty() || path[0] == '/') return false;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == ".." || part.empty()) return false;
  }
  return true;
}

absl::Status ValidateShardEntry(const ShardEntry& shard, absl::string_view schema, int index,
                                const std::string& dir) {
  const std::string field = absl::StrCat("shards[", index, "]");
  if (!IsPlainRelativePath(shard.path())) {
    return ManifestError(dir, absl::StrCat(field, ".path \"", shard.path(),
                                           "\" must be a relative path inside the folder"));
  }
  if (!shard.has_num_samples() || shard.num_samples() < 0) {
    return ManifestError(dir, absl::StrCat(field, ".num_samples missing or negative"));
  }
  if (schema == "tokens" && (!shard.has_num_tokens() || shard.num_tokens() < 0)) {
    return ManifestError(dir, absl::StrCat(field, ".num_tokens missing or negative"));
  }
  uint32_t crc = 0;
  if (!absl::StartsWith(shard.checksum(), "crc32:") || shard.checksum().size() != 14 ||
      !absl::SimpleHexAtoi(absl::string_view(shard.checksum()).substr(6), &crc)) {
    return ManifestError(dir, absl::StrCat(field, ".checksum \"", shard.checksum(),
                                           "\" is not crc32:<8 hex digits>"));
  }
  struct stat info;
  const std::string path = ShardPath(dir, shard);
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    return ManifestError(dir, absl::StrCat(field, ".path: shard file ", path, " is missing"));
  }
  if (shard.has_bytes() && shard.bytes() != static_cast<int64_t>(info.st_size)) {
    return ManifestError(dir, absl::StrCat(field, ": shard file ", path, " has ", info.st_size,
                                           " bytes, the manifest says ", shard.bytes(),
                                           " (truncated or replaced?)"));
  }
  // Every sample and token takes at least one byte of the file: a larger
  // count is forged, and would size the sampler's permutation before any
  // shard is opened.
  if (shard.num_samples() > info.st_size || shard.num_tokens() > info.st_size) {
    return ManifestError(
        dir,
        absl::StrCat(field, " declares ", shard.num_samples(), " samples",
                     schema == "tokens" ? absl::StrCat(" and ", shard.num_tokens(), " tokens") : "",
                     " in a file of ", info.st_size, " bytes"));
  }
  return absl::OkStatus();
}

// tokens: `eod_token` (the end-of-document id the readers insert) must be a
// token of the vocabulary.
absl::Status CheckEodToken(const DataManifest& manifest, const std::string& dir) {
  if (manifest.schema() != "tokens") return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(int64_t vocab, IntAttribute(manifest, "vocab_size", dir));
  TESSERA_ASSIGN_OR_RETURN(int64_t eod, IntAttribute(manifest, "eod_token", dir));
  if (eod < 0 || eod >= vocab) {
    return ManifestError(dir, absl::StrCat("attributes[\"eod_token\"] = ", eod,
                                           " is outside [0, vocab_size ", vocab, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string ShardPath(const std::string& dir, const ShardEntry& shard) {
  return absl::StrCat(dir, "/", shard.path());
}

absl::Status ValidateManifest(const DataManifest& manifest, const std::string& dir) {
  auto schema = FindSchema(manifest.schema());
  if (!schema.ok()) return ManifestError(dir, absl::StrCat("schema: ", schema.status().message()));
  if (manifest.version() != (*schema)->version) {
    return ManifestError(dir, absl::StrCat("version is ", manifest.version(), ", this build reads ",
                                           manifest.schema(), " version ", (*schema)->version));
  }
  for (const std::string& key : RequiredAttributes(manifest.schema())) {
    TESSERA_ASSIGN_OR_RETURN(int64_t value, IntAttribute(manifest, key, dir));
    if (value <= 0) {
      return ManifestError(dir, absl::StrCat("attributes[\"", key, "\"] must be positive"));
    }
  }
  TESSERA_RETURN_IF_ERROR(CheckEodToken(manifest, dir));
  int64_t total = 0;
  for (int i = 0; i < manifest.shards_size(); ++i) {
    TESSERA_RETURN_IF_ERROR(ValidateShardEntry(manifest.shards(i), manifest.schema(), i, dir));
    total += manifest.shards(i).num_samples();  // each bounded by its file's size: no overflow
  }
  if (!manifest.has_num_samples() || manifest.num_samples() != total) {
    return ManifestError(dir, absl::StrCat("num_samples is ", manifest.num_samples(),
                                           " but the shards hold ", total));
  }
  return absl::OkStatus();
}

absl::StatusOr<DataManifest> ReadManifest(const std::string& dir) {
  const std::string path = ManifestPath(dir);
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) return DataError(absl::StrCat(path, ": not found"));
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  DataManifest manifest;
  google::protobuf::TextFormat::Parser parser;
  FirstError errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &manifest)) {
    return DataError(absl::StrCat(path, ": ", errors.error));
  }
  TESSERA_RETURN_IF_ERROR(ValidateManifest(manifest, dir));
  return manifest;
}

absl::Status WriteManifest(const std::string& dir, const DataManifest& manifest) {
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(manifest, &text)) {
    return DataError(absl::StrCat(ManifestPath(dir), ": cannot serialize the manifest"));
  }
  text = absl::StrCat("# tessera data set manifest (docs/data-format.md)\n", text);
  return WriteFileAtomically(ManifestPath(dir), text);
}

absl::StatusOr<int64_t> IntAttribute(const DataManifest& manifest, absl::string_view key,
                                     const std::string& dir) {
  const auto it = manifest.attributes().find(std::string(key));
  int64_t value = 0;
  if (it == manifest.attributes().end()) {
    return ManifestError(dir, absl::StrCat("attributes[\"", key, "\"] is missing"));
  }
  if (!absl::SimpleAtoi(it->second, &value)) {
    return ManifestError(
        dir, absl::StrCat("attributes[\"", key, "\"] = \"", it->second, "\" is not an integer"));
  }
  return value;
}

absl::Status CheckShardAgainstManifest(const ShardInfo& info, const ShardEntry& shard,
                                       const DataManifest& manifest, const std::string& dir) {
  const std::string path = ShardPath(dir, shard);
  if (info.num_samples != shard.num_samples()) {
    return DataError(absl::StrCat(path, ": holds ", info.num_samples, " samples, ",
                                  ManifestPath(dir), " says ", shard.num_samples()));
  }
  if (manifest.schema() == "images") {
    const std::vector<int64_t>& dims = info.dims.at("images");
    const char* keys[] = {"channels", "height", "width"};
    for (int i = 0; i < 3; ++i) {
      TESSERA_ASSIGN_OR_RETURN(int64_t expected, IntAttribute(manifest, keys[i], dir));
      if (dims[i + 1] != expected) {
        return DataError(absl::StrCat(path, ": images have ", keys[i], " ", dims[i + 1], ", ",
                                      ManifestPath(dir), " says ", expected));
      }
    }
  }
  if (manifest.schema() == "tokens" && info.dims.at("tokens")[0] != shard.num_tokens()) {
    return DataError(absl::StrCat(path, ": holds ", info.dims.at("tokens")[0], " tokens, ",
                                  ManifestPath(dir), " says num_tokens ", shard.num_tokens()));
  }
  return absl::OkStatus();
}

absl::Status VerifyDataset(const std::string& dir) {
  TESSERA_ASSIGN_OR_RETURN(DataManifest manifest, ReadManifest(dir));
  TESSERA_ASSIGN_OR_RETURN(ValueLimits limits, ValueLimitsOf(manifest, dir));
  for (const ShardEntry& shard : manifest.shards()) {
    const std::string path = ShardPath(dir, shard);
    TESSERA_ASSIGN_OR_RETURN(FileChecksum checksum, ChecksumFile(path));
    if (FormatCrc32(checksum.crc32) != shard.checksum()) {
      return DataError(absl::StrCat(path, ": checksum is ", FormatCrc32(checksum.crc32), ", ",
                                    ManifestPath(dir), " says ", shard.checksum(),
                                    " (the file is corrupt or was changed)"));
    }
    TESSERA_ASSIGN_OR_RETURN(ShardInfo info, ValidateShard(path, manifest.schema()));
    TESSERA_RETURN_IF_ERROR(CheckShardAgainstManifest(info, shard, manifest, dir));
    TESSERA_RETURN_IF_ERROR(VerifyShardValues(path, info, limits));
  }
  return absl::OkStatus();
}

}  // namespace tessera
