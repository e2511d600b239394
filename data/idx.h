// IDX files (the MNIST family's format): a big-endian header of magic number
// and dimensions, then the elements. Only unsigned-byte arrays (type 0x08) are
// read, which is what images and labels use.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, prod(dims) bytes
};

// Reads `path`, gzip-compressed or not (zlib reads both). Checks the magic
// number (0x0000 08 <rank>), that the rank is `expected_rank`, and that the
// file holds exactly the bytes its dimensions promise. Errors are DataErrors
// naming the file.
absl::StatusOr<IdxArray> ReadIdxU8(const std::string& path, int expected_rank);

}  // namespace tessera
