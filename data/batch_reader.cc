#include "data/batch_reader.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

// Bounds on what a config may ask for, so nothing absurd is allocated.
constexpr int64_t kMaxGlobalBatch = int64_t{1} << 24;
constexpr int kMaxPrefetch = 1024;

absl::Status ValidateReaderOptions(const ReaderOptions& options) {
  if (options.dir.empty()) return UsageError(absl::StrCat(options.field, " is empty"));
  if (options.num_replicas < 1) {
    return UsageError(absl::StrCat("number of data-parallel replicas must be positive, got ",
                                   options.num_replicas));
  }
  if (options.replica < 0 || options.replica >= options.num_replicas) {
    return UsageError(
        absl::StrCat("replica ", options.replica, " is outside [0, ", options.num_replicas, ")"));
  }
  if (options.global_batch <= 0 || options.global_batch % options.num_replicas != 0) {
    return UsageError(absl::StrCat("train.global_batch (", options.global_batch,
                                   ") must be a positive multiple of the number of data-parallel "
                                   "replicas (",
                                   options.num_replicas, ")"));
  }
  if (options.global_batch > kMaxGlobalBatch) {
    return UsageError(absl::StrCat("train.global_batch (", options.global_batch,
                                   ") exceeds the limit of ", kMaxGlobalBatch));
  }
  if (options.prefetch < 1 || options.prefetch > kMaxPrefetch) {
    return UsageError(
        absl::StrCat("data.prefetch must be in [1, ", kMaxPrefetch, "], got ", options.prefetch));
  }
  return absl::OkStatus();
}

absl::StatusOr<DataManifest> ReadReaderManifest(const ReaderOptions& options,
                                                absl::string_view schema,
                                                absl::string_view make_hint) {
  struct stat info;
  const std::string manifest_path = absl::StrCat(options.dir, "/", kManifestFile);
  if (::stat(manifest_path.c_str(), &info) != 0) {
    return DataError(absl::StrCat(options.field, " \"", options.dir, "\": no ", kManifestFile,
                                  " (", make_hint, ", or point ", options.field, " at one)"));
  }
  TESSERA_ASSIGN_OR_RETURN(DataManifest manifest, ReadManifest(options.dir));
  if (manifest.schema() != schema) {
    return DataError(absl::StrCat(options.field, " \"", options.dir, "\": ", manifest_path,
                                  ": schema is \"", manifest.schema(), "\", this reader needs \"",
                                  schema, "\""));
  }
  if (manifest.num_samples() == 0) {
    return DataError(
        absl::StrCat(options.field, " \"", options.dir, "\": the data set has no samples"));
  }
  return manifest;
}

}  // namespace tessera
