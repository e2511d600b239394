// Optimizer and EMA updates over flat fp32 buffers.
#pragma once

#include <cstdint>
#include <span>

#include "runtime/kernels/kernel_args.h"

namespace tessera::cpu {

// One AdamW step (decoupled weight decay) over disjoint segments of the
// buffers, of the gradients times grad_scale (the clip scale: each gradient
// rounded to float after the product, as scaling the buffer first would);
// each element's update depends only on that element.
void AdamWUpdate(const AdamWScalars& s, std::span<const AdamWSegment> segments, float* params,
                 const float* grads, float* m, float* v, float grad_scale);

// The step's guard (Backend::StepGuard): *scale = 0 once *diverged_step is
// set or the norm sqrt(*norm_squared) is not finite (which sets it to
// `step`), else the clip scale of runtime/optim/clip.h rounded to float.
void StepGuard(const double* norm_squared, double max_norm, int64_t step, double* diverged_step,
               float* scale);

// The row-wise sparse optimizer of a row-sharded table on `count` distinct
// rows: row rows[k] of params [*, dim] takes the gradient grads[k] [dim]
// times s.grad_scale, with Adam (the same rows of m and v) or row-wise
// Adagrad (the accumulator sums[rows[k]] gains the mean square of the
// gradient, summed in column order). Rows are independent: any thread
// count gives the same bits. m, v (Adam) or sums (Adagrad) may be null
// when the other kind runs.
void SparseRowUpdate(const SparseRowScalars& s, const int32_t* rows, int64_t count, int64_t dim,
                     const float* grads, float* params, float* m, float* v, float* sums);

// ema += blend * (params - ema), blend = 1 - decay.
void EmaUpdate(float* ema, const float* params, int64_t n, float blend);

}  // namespace tessera::cpu
