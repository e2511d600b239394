#include "runtime/optim/clip.h"

#include <cmath>

namespace tessera {

double ClipScale(double total_norm, double max_norm) {
  if (max_norm <= 0 || !std::isfinite(total_norm) || total_norm <= max_norm) return 1.0;
  return max_norm / total_norm;
}

}  // namespace tessera
