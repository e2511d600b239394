// Loops over flat buffers on the GPU: scaling, the sum of squares behind the
// gradient norm, element gathers/scatters, and the AdamW and EMA updates.
// Same semantics as runtime/kernels/cpu/flat.h and optimizer.h; device
// pointers, queued on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::cuda {

// x[i] *= scale
absl::Status Scale(float* x, int64_t n, float scale, cudaStream_t stream);

// Blocks of the first pass of SumSquares; `partials` holds that many doubles.
inline constexpr int kSumSquaresBlocks = 256;
// *result (device) = sum of x[i]^2 in double, summed in a fixed order (the
// same bits on every run).
absl::Status SumSquares(const float* x, int64_t n, double* partials, double* result,
                        cudaStream_t stream);
// *acc += weight * x[i], i in order (one thread: n is a handful of ranks'
// partials or micro-batches' losses).
absl::Status AccumulateScalars(const double* x, int64_t n, double weight, double* acc,
                               cudaStream_t stream);
// The step's guard and clip scale (cpu::StepGuard's formula), one thread.
absl::Status StepGuard(const double* norm_squared, double max_norm, int64_t step,
                       double* diverged_step, float* scale, cudaStream_t stream);

// out[i] = in[index[i]]
absl::Status GatherElements(const float* in, const int32_t* index, float* out, int64_t n,
                            cudaStream_t stream);
// out[index[i]] = in[i]
absl::Status ScatterElements(const float* in, const int32_t* index, float* out, int64_t n,
                             cudaStream_t stream);

// One AdamW step over elements [begin, end), with weight decay when `decay`
// (the formula of cpu::AdamWUpdate, element by element), of the gradients
// times *grad_scale (device; null: 1); nothing when *grad_scale is 0.
absl::Status AdamWUpdateRange(const AdamWScalars& scalars, int64_t begin, int64_t end, bool decay,
                              float* params, const float* grads, float* m, float* v,
                              const float* grad_scale, cudaStream_t stream);

// runtime/kernels/cpu/optimizer.h's SparseRowUpdate (a row-sharded table's
// sparse Adam or row-wise Adagrad on `count` distinct rows), the same
// double arithmetic rounded the same way: the CPU's bits.
absl::Status SparseRowUpdate(const SparseRowScalars& s, const int32_t* rows, int64_t count,
                             int64_t dim, const float* grads, float* params, float* m, float* v,
                             float* sums, cudaStream_t stream);

// ema += blend * (params - ema)
// runtime/kernels/cpu/flat.h's CounterDropoutMask, one thread per element.
absl::Status CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width, uint64_t key,
                                float rate, float* mask, cudaStream_t stream);
// ema += blend * (params - ema); nothing when *guard (device; null: none) is 0.
absl::Status EmaUpdate(float* ema, const float* params, int64_t n, float blend,
                       const float* guard, cudaStream_t stream);

}  // namespace tessera::cuda
