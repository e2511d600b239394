// Optimizer and EMA updates over flat fp32 buffers.
#pragma once

#include <cstdint>
#include <span>

#include "runtime/kernels/kernel_args.h"

namespace tessera::cpu {

// One AdamW step (decoupled weight decay) over disjoint segments of the
// buffers; each element's update depends only on that element.
void AdamWUpdate(const AdamWScalars& s, std::span<const AdamWSegment> segments, float* params,
                 const float* grads, float* m, float* v);

// ema += blend * (params - ema), blend = 1 - decay.
void EmaUpdate(float* ema, const float* params, int64_t n, float blend);

}  // namespace tessera::cpu
