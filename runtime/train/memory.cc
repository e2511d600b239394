#include "runtime/train/memory.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace tessera {
namespace {
size_t ReadStatusKilobytes(const char* key) {
  std::FILE* file = std::fopen("/proc/self/status", "r");
  if (file == nullptr) return 0;
  char line[256];
  size_t kilobytes = 0;
  const size_t key_length = std::strlen(key);
  while (std::fgets(line, sizeof(line), file) != nullptr) {
    if (std::strncmp(line, key, key_length) == 0) {
      std::sscanf(line + key_length, " %zu", &kilobytes);
      break;
    }
  }
  std::fclose(file);
  return kilobytes * 1024;
}

// The first unsigned number in a one-line file ("max" and absence: 0).
size_t ReadNumberFile(const char* path) {
  std::FILE* file = std::fopen(path, "r");
  if (file == nullptr) return 0;
  unsigned long long value = 0;
  const bool read = std::fscanf(file, "%llu", &value) == 1;
  std::fclose(file);
  return read ? static_cast<size_t>(value) : 0;
}

size_t MemAvailableBytes() {
  std::FILE* file = std::fopen("/proc/meminfo", "r");
  if (file == nullptr) return 0;
  char line[256];
  size_t kilobytes = 0;
  while (std::fgets(line, sizeof(line), file) != nullptr) {
    if (std::sscanf(line, "MemAvailable: %zu", &kilobytes) == 1) break;
  }
  std::fclose(file);
  return kilobytes * 1024;
}

// limit - usage of this process's cgroup (v2, else v1); 0 without a limit.
size_t CgroupHeadroomBytes() {
  struct {
    const char* limit;
    const char* usage;
  } const files[] = {{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                     {"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                      "/sys/fs/cgroup/memory/memory.usage_in_bytes"}};
  for (const auto& f : files) {
    const size_t limit = ReadNumberFile(f.limit);
    // v1 reports "no limit" as a number near 2^63.
    if (limit == 0 || limit >= (size_t{1} << 60)) continue;
    const size_t usage = ReadNumberFile(f.usage);
    return limit > usage ? limit - usage : 1;
  }
  return 0;
}
}  // namespace

size_t AvailableMemoryBytes() {
  const size_t host = MemAvailableBytes();
  const size_t cgroup = CgroupHeadroomBytes();
  if (host == 0 || cgroup == 0) return host + cgroup;  // whichever is known
  return std::min(host, cgroup);
}

size_t CurrentRssBytes() { return ReadStatusKilobytes("VmRSS:"); }
size_t PeakRssBytes() { return ReadStatusKilobytes("VmHWM:"); }

}  // namespace tessera
