// Learning-rate schedules (optim.schedule, optim.warmup_steps, optim.min_lr).
//
// `step` is 0-based: LearningRate(config, s, T) is the rate used by the
// (s+1)-th optimizer step of a run of T steps. With W = warmup_steps:
//   s < W:              lr * (s + 1) / W     (step 0 gets lr / W, step W-1 gets lr)
//   s >= W, CONSTANT:   lr
//   s >= W, COSINE:     min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,
//                       p = min(1, (s - W) / (T - W))
// so the cosine starts at lr on step W and reaches min_lr at s = T (the last
// step, s = T - 1, is one small step above min_lr); steps past T stay at
// min_lr. When T <= W the cosine part is empty and any s >= W gets min_lr.
#pragma once

#include <cstdint>

#include "runtime/config/config.pb.h"

namespace tessera {

double LearningRate(const OptimConfig& config, int64_t step, int64_t total_steps);

}  // namespace tessera
