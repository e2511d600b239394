#include "runtime/optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace tessera {

double LearningRate(const OptimConfig& config, int64_t step, int64_t total_steps) {
  const double lr = config.lr();
  const int64_t warmup = config.warmup_steps();
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (config.schedule() == OptimConfig::CONSTANT) return lr;

  const double min_lr = config.min_lr();
  const int64_t decay_steps = total_steps - warmup;
  if (decay_steps <= 0) return min_lr;
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(decay_steps));
  constexpr double kPi = 3.14159265358979323846;
  return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(kPi * progress));
}

}  // namespace tessera
