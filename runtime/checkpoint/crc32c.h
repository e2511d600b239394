// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of
// every checkpoint piece. Abseil 20220623 has no absl/crc, so we carry our
// own: the SSE4.2 crc32 instruction where the build targets it, else a
// slicing-by-8 table; both give identical results.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera {

// Continues `crc` (0 to start) over `size` bytes.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);
// The table implementation, always available (tests compare the two).
uint32_t Crc32cPortable(const void* data, size_t size, uint32_t crc = 0);

}  // namespace tessera
