// A per-process scratch folder for fuzz targets whose code under test reads
// files: emptied before each input, removed at exit.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace tessera::fuzz {

// $TMPDIR/tessera_fuzz_<pid>, empty. Prefer a tmpfs TMPDIR: every input
// writes files.
inline std::string FreshScratchDir() {
  // Never freed: the exit handler below runs after static destructors.
  static const std::string* const dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    auto* path = new std::string(std::string(tmp && *tmp ? tmp : "/tmp") + "/tessera_fuzz_" +
                                 std::to_string(getpid()));
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(*dir, ignored);
    });
    return path;
  }();
  std::error_code ignored;
  std::filesystem::remove_all(*dir, ignored);
  std::filesystem::create_directories(*dir);
  return *dir;
}

inline void WriteBytes(const std::string& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

}  // namespace tessera::fuzz
