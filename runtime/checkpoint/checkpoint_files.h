// POSIX file helpers for the checkpoint commit protocol: durable writes
// (temporary name, fsync, rename, fsync of the folder) so that a crash never
// leaves a half-written file under its final name. Failures are
// CheckpointErrors naming the path and errno's text.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera {

// fsyncs a file or a directory.
absl::Status FsyncPath(const std::string& path);

// Writes `contents` to `path` + ".tmp", fsyncs it, renames it to `path` and
// fsyncs the folder.
absl::Status WriteFileDurably(const std::string& path, absl::string_view contents);

// Renames `from` to `to` (files or directories) and fsyncs `to`'s folder.
absl::Status RenameDurably(const std::string& from, const std::string& to);

absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

// Bytes of all regular files below `path` (0 when it does not exist).
int64_t DiskBytes(const std::string& path);

}  // namespace tessera
