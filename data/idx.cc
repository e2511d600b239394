#include "data/idx.h"

#include <zlib.h>

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"

namespace tessera {
namespace {

// Reads up to `size` bytes; returns how many, or a DataError on a zlib error
// (a corrupt or truncated gzip stream).
absl::StatusOr<size_t> ReadSome(gzFile file, const std::string& path, void* out, size_t size) {
  size_t total = 0;
  auto* bytes = static_cast<uint8_t*>(out);
  while (total < size) {
    const unsigned request = static_cast<unsigned>(std::min<size_t>(size - total, 1u << 30));
    const int n = gzread(file, bytes + total, request);
    if (n < 0) {
      int code = 0;
      const char* message = gzerror(file, &code);
      return DataError(absl::StrCat(path, ": cannot decompress: ", message));
    }
    if (n == 0) break;
    total += static_cast<size_t>(n);
  }
  return total;
}

uint32_t BigEndian32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}

}  // namespace

absl::StatusOr<IdxArray> ReadIdxU8(const std::string& path, int expected_rank) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) return DataError(absl::StrCat(path, ": cannot open"));
  absl::Cleanup close = [file] { gzclose(file); };
  gzbuffer(file, 1 << 18);

  uint8_t magic[4];
  auto got = ReadSome(file, path, magic, 4);
  if (!got.ok()) return got.status();
  if (*got < 4) return DataError(absl::StrCat(path, ": too short for an IDX header"));
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != expected_rank) {
    return DataError(absl::StrFormat(
        "%s: magic number is 0x%02x%02x%02x%02x, expected 0x000008%02x (IDX, unsigned bytes, "
        "%d dimensions)",
        path, magic[0], magic[1], magic[2], magic[3], expected_rank, expected_rank));
  }
  IdxArray array;
  std::vector<uint8_t> header(4 * static_cast<size_t>(expected_rank));
  got = ReadSome(file, path, header.data(), header.size());
  if (!got.ok()) return got.status();
  if (*got < header.size()) return DataError(absl::StrCat(path, ": header truncated"));
  // Each dimension is < 2^32 and the product stops at the limit, so it never
  // overflows (three dimensions of 2^32 - 1 would).
  constexpr int64_t kMaxElements = int64_t{1} << 40;
  int64_t numel = 1;
  bool implausible = false;
  for (int i = 0; i < expected_rank; ++i) {
    array.dims.push_back(BigEndian32(&header[4 * i]));
    if (array.dims.back() != 0 && numel > kMaxElements / array.dims.back()) implausible = true;
    if (!implausible) numel *= array.dims.back();
  }
  if (implausible || numel > kMaxElements) {
    return DataError(absl::StrCat(path, ": implausible dimensions ", absl::StrJoin(array.dims, " x "),
                                  " (more than 2^40 elements)"));
  }
  // The header is not trusted with an allocation: the array grows as the
  // data arrives, so a short file promising 2^40 bytes costs what it holds.
  constexpr int64_t kChunk = int64_t{1} << 20;  // the vector still grows geometrically
  int64_t have = 0;
  while (have < numel) {
    const int64_t want = std::min(kChunk, numel - have);
    array.data.resize(static_cast<size_t>(have + want));
    got = ReadSome(file, path, array.data.data() + have, static_cast<size_t>(want));
    if (!got.ok()) return got.status();
    have += static_cast<int64_t>(*got);
    if (static_cast<int64_t>(*got) < want) break;
  }
  if (have < numel) {
    return DataError(absl::StrCat(path, ": truncated: the header promises ", numel,
                                  " bytes of data, the file has ", have));
  }
  uint8_t extra;
  got = ReadSome(file, path, &extra, 1);
  if (!got.ok()) return got.status();
  if (*got != 0) {
    return DataError(absl::StrCat(path, ": more bytes than the header's ", numel));
  }
  return array;
}

}  // namespace tessera
