// Fuzz target: the IDX reader (data/idx.h) behind `tessera data import`.
//
// Input: one IDX file. The first byte picks the expected rank (1 or 3) and
// whether the file is written gzip-compressed; the rest is the file. A file
// that reads must hold exactly the bytes its dimensions promise.
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "data/idx.h"
#include "fuzz/scratch_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t control = data[0];
  const std::string_view file(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string dir = tessera::fuzz::FreshScratchDir();
  const std::string path = dir + "/images-idx-ubyte";
  if (control & 2) {
    gzFile gz = gzopen(path.c_str(), "wb");
    if (!file.empty()) gzwrite(gz, file.data(), static_cast<unsigned>(file.size()));
    gzclose(gz);
  } else {
    tessera::fuzz::WriteBytes(path, file);
  }
  const int expected_rank = (control & 1) ? 3 : 1;
  absl::StatusOr<tessera::IdxArray> array = tessera::ReadIdxU8(path, expected_rank);
  if (array.ok()) {
    int64_t elements = 1;
    for (int64_t d : array->dims) {
      if (d < 0) __builtin_trap();
      elements *= d;
    }
    if (static_cast<int>(array->dims.size()) != expected_rank ||
        static_cast<int64_t>(array->data.size()) != elements) {
      __builtin_trap();
    }
  }
  return 0;
}
