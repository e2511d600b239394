// The data set manifest: `manifest.textproto` in a data set's folder, the
// protobuf text format of tessera.DataManifest (data/manifest.proto). It is the
// only thing that makes a folder a data set: writers put it in place last.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/manifest.pb.h"
#include "data/schema.h"

namespace tessera {

inline constexpr char kManifestFile[] = "manifest.textproto";

// Parses and validates `dir`/manifest.textproto: known schema and version,
// required attributes, shard paths inside `dir` that exist with the recorded
// size, sample counts that add up, well-formed checksums. Errors are
// DataErrors naming the manifest file and the field. Does not read the shards.
absl::StatusOr<DataManifest> ReadManifest(const std::string& dir);

// The same checks on a manifest in memory (`dir` for shard paths and messages).
absl::Status ValidateManifest(const DataManifest& manifest, const std::string& dir);

// Writes `dir`/manifest.textproto through a temporary file and a rename.
absl::Status WriteManifest(const std::string& dir, const DataManifest& manifest);

// `dir`/`shard.path`.
std::string ShardPath(const std::string& dir, const ShardEntry& shard);

// An integer attribute of the manifest (e.g. "height"); DataError naming the
// manifest when absent or not an integer.
absl::StatusOr<int64_t> IntAttribute(const DataManifest& manifest, absl::string_view key,
                                     const std::string& dir);

// Checks what ValidateShard found in a shard against its manifest entry: the
// sample count and, for images, channels, height and width.
absl::Status CheckShardAgainstManifest(const ShardInfo& info, const ShardEntry& shard,
                                       const DataManifest& manifest, const std::string& dir);

// Full check of a data set: the manifest, then every shard's size and crc32
// checksum, then every shard against its schema and manifest entry, then
// every value against the rules of data/value_checks.h. Slow (reads
// everything), so readers do not call it; tests and `tessera data verify` do.
absl::Status VerifyDataset(const std::string& dir);

}  // namespace tessera
