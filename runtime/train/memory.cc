#include "runtime/train/memory.h"

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
}  // namespace

size_t CurrentRssBytes() { return ReadStatusKilobytes("VmRSS:"); }
size_t PeakRssBytes() { return ReadStatusKilobytes("VmHWM:"); }

}  // namespace tessera
