// Small POSIX file helpers for writing data sets safely: write to a temporary
// name, fsync, rename, so an interrupted writer never leaves a half file under
// the final name.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera {

// The temporary name a file is written under before it is renamed into place.
std::string TempPathFor(const std::string& path);

// Flushes a file's contents to disk.
absl::Status FsyncFile(const std::string& path);

// fsyncs `from`, renames it to `to` and fsyncs the folder so the rename
// survives a crash.
absl::Status CommitFile(const std::string& from, const std::string& to);

// Writes `contents` to `path` through a temporary file and CommitFile.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// The zlib crc32 and size of a whole file.
struct FileChecksum {
  uint32_t crc32 = 0;
  int64_t bytes = 0;
};
absl::StatusOr<FileChecksum> ChecksumFile(const std::string& path);
// "crc32:0a1b2c3d"
std::string FormatCrc32(uint32_t crc);

}  // namespace tessera
