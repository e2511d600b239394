// Process memory as the kernel reports it (Linux /proc/self/status).
#pragma once

#include <cstddef>

namespace tessera {

size_t CurrentRssBytes();  // VmRSS
size_t PeakRssBytes();     // VmHWM

// Memory this process may still take: the smaller of the host's MemAvailable
// (/proc/meminfo) and, under a cgroup limit (v2 memory.max, v1
// memory.limit_in_bytes), the limit minus the cgroup's current usage. 0 when
// neither can be read (then callers skip their checks).
size_t AvailableMemoryBytes();

}  // namespace tessera
