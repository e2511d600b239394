// Sizes and durations as people read them, for logs and reports.
#pragma once

#include <string>

namespace tessera {

// Binary units with one decimal: "512.0 B", "9.6 MiB", "1.2 GiB" (up to EiB).
std::string HumanBytes(double bytes);

// "42s", "3m07s", "2h05m" (whole seconds; negative counts as 0).
std::string HumanSeconds(double seconds);

}  // namespace tessera
