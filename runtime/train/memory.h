// Process memory as the kernel reports it (Linux /proc/self/status).
#pragma once

#include <cstddef>

namespace tessera {

size_t CurrentRssBytes();  // VmRSS
size_t PeakRssBytes();     // VmHWM

}  // namespace tessera
