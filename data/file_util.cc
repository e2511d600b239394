#include "data/file_util.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"

namespace tessera {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return DataError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}

std::string ParentDir(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::string TempPathFor(const std::string& path) { return path + ".tmp"; }

absl::Status FsyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return Errno("cannot open", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("fsync failed", path);
  return absl::OkStatus();
}

absl::Status CommitFile(const std::string& from, const std::string& to) {
  absl::Status status = FsyncFile(from);
  if (!status.ok()) return status;
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    return Errno(absl::StrCat("cannot rename to ", to), from);
  }
  // Persist the directory entry too; some filesystems refuse to fsync a
  // folder, which only weakens crash safety, so that is not an error.
  const int dir_fd = ::open(ParentDir(to).c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  const std::string temp = TempPathFor(path);
  std::FILE* file = std::fopen(temp.c_str(), "wb");
  if (file == nullptr) return Errno("cannot create", temp);
  const size_t written = std::fwrite(contents.data(), 1, contents.size(), file);
  const bool closed = std::fclose(file) == 0;
  if (written != contents.size() || !closed) {
    std::remove(temp.c_str());
    return Errno("write failed", temp);
  }
  return CommitFile(temp, path);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return Errno("cannot open", path);
  absl::Cleanup close = [file] { std::fclose(file); };
  std::string contents;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) contents.append(buffer, n);
  if (std::ferror(file)) return Errno("read failed", path);
  return contents;
}

absl::StatusOr<FileChecksum> ChecksumFile(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return Errno("cannot open", path);
  absl::Cleanup close = [file] { std::fclose(file); };
  FileChecksum checksum;
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<unsigned char> buffer(1 << 20);
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), file)) > 0) {
    crc = crc32(crc, buffer.data(), static_cast<uInt>(n));
    checksum.bytes += static_cast<int64_t>(n);
  }
  if (std::ferror(file)) return Errno("read failed", path);
  checksum.crc32 = static_cast<uint32_t>(crc);
  return checksum;
}

std::string FormatCrc32(uint32_t crc) { return absl::StrFormat("crc32:%08x", crc); }

}  // namespace tessera
