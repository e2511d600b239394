// Flat-buffer loops. SumSquares is a two-pass reduction with a fixed grid,
// so its result does not depend on timing.
#include "runtime/base/random.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/flat.h"

namespace tessera::cuda {
namespace {

using internal::BlockSum;
using internal::LaunchFlat;

__global__ void ScaleKernel(float* x, int64_t n, float scale) {
  TESSERA_CUDA_FOR(i, n) { x[i] *= scale; }
}

constexpr int kReduceThreads = 256;

// partials[block] = sum over the block's grid-stride share of x^2.
__global__ void SumSquaresPartialKernel(const float* __restrict__ x, int64_t n, double* partials) {
  __shared__ double scratch[32];
  double sum = 0;
  TESSERA_CUDA_FOR(i, n) { sum += static_cast<double>(x[i]) * x[i]; }
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void SumPartialsKernel(const double* partials, int count, double* result) {
  __shared__ double scratch[32];
  double sum = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) *result = sum;
}

// One thread: the order of the additions is the host's.
__global__ void AccumulateScalarsKernel(const double* x, int64_t n, double weight, double* acc) {
  double sum = *acc;
  for (int64_t i = 0; i < n; ++i) sum += weight * x[i];
  *acc = sum;
}

__global__ void StepGuardKernel(const double* norm_squared, double max_norm, int64_t step,
                                double* diverged_step, float* scale) {
  const double norm = sqrt(*norm_squared);
  if (*diverged_step == 0 && !isfinite(norm)) *diverged_step = static_cast<double>(step);
  if (*diverged_step != 0) {
    *scale = 0.0f;
    return;
  }
  *scale = max_norm > 0 && norm > max_norm ? static_cast<float>(max_norm / norm) : 1.0f;
}

__global__ void GatherKernel(const float* __restrict__ in, const int32_t* __restrict__ index,
                             float* __restrict__ out, int64_t n) {
  TESSERA_CUDA_FOR(i, n) { out[i] = in[index[i]]; }
}

__global__ void ScatterKernel(const float* __restrict__ in, const int32_t* __restrict__ index,
                              float* __restrict__ out, int64_t n) {
  TESSERA_CUDA_FOR(i, n) { out[index[i]] = in[i]; }
}

__global__ void AdamWKernel(AdamWScalars s, float keep, float* __restrict__ params,
                            const float* __restrict__ grads, float* __restrict__ m,
                            float* __restrict__ v, int64_t n, const float* grad_scale) {
  const float scale = grad_scale != nullptr ? *grad_scale : 1.0f;
  if (scale == 0.0f) return;  // StepGuard skipped the step
  TESSERA_CUDA_FOR(i, n) {
    const float g = grads[i] * scale;
    const float mi = s.beta1 * m[i] + s.one_minus_beta1 * g;
    const float vi = s.beta2 * v[i] + s.one_minus_beta2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    params[i] = params[i] * keep - s.step_size * mi / (sqrtf(vi) * s.inv_sqrt_bias2 + s.eps);
  }
}

// The table's sparse Adam (runtime/kernels/cpu/optimizer.h), one thread per
// element of the touched rows. Explicitly rounded double operations: nvcc
// would otherwise contract a * b + c into one fma, which the host's formula
// does not round the same way.
__global__ void SparseAdamKernel(SparseRowScalars s, const int32_t* __restrict__ rows,
                                 int64_t count, int64_t dim, const float* __restrict__ grads,
                                 float* __restrict__ params, float* __restrict__ m,
                                 float* __restrict__ v) {
  TESSERA_CUDA_FOR(i, count * dim) {
    const int64_t k = i / dim, d = i % dim;
    const int64_t at = int64_t{rows[k]} * dim + d;
    const float g = __fmul_rn(grads[i], s.grad_scale);
    const double gd = g;
    const float mi = __double2float_rn(
        __dadd_rn(__dmul_rn(s.beta1, m[at]), __dmul_rn(__dsub_rn(1.0, s.beta1), gd)));
    const float vi = __double2float_rn(__dadd_rn(
        __dmul_rn(s.beta2, v[at]), __dmul_rn(__dmul_rn(__dsub_rn(1.0, s.beta2), gd), gd)));
    m[at] = mi;
    v[at] = vi;
    const double step = __ddiv_rn(__dmul_rn(s.lr, __ddiv_rn(mi, s.bias1)),
                                  __dadd_rn(__dsqrt_rn(__ddiv_rn(vi, s.bias2)), s.eps));
    params[at] = __fsub_rn(params[at], __double2float_rn(step));
  }
}

// Row-wise Adagrad: one block per touched row; thread 0 sums the row's mean
// square in column order (the host's order), then every thread updates its
// columns.
constexpr int kAdagradThreads = 128;
__global__ void SparseAdagradKernel(SparseRowScalars s, const int32_t* __restrict__ rows,
                                    int64_t dim, const float* __restrict__ grads,
                                    float* __restrict__ params, float* __restrict__ sums) {
  __shared__ float root;
  const int64_t k = blockIdx.x;
  const float* gk = grads + k * dim;
  const int64_t row = rows[k];
  if (threadIdx.x == 0) {
    const double n = static_cast<double>(dim);
    double mean_square = 0;
    for (int64_t d = 0; d < dim; ++d) {
      const double g = __fmul_rn(gk[d], s.grad_scale);
      mean_square = __dadd_rn(mean_square, __ddiv_rn(__dmul_rn(g, g), n));
    }
    const float sum = __double2float_rn(__dadd_rn(sums[row], mean_square));
    sums[row] = sum;
    root = __fsqrt_rn(sum);
  }
  __syncthreads();
  const double denominator = __dadd_rn(root, s.eps);
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    const double g = __fmul_rn(gk[d], s.grad_scale);
    const double step = __ddiv_rn(__dmul_rn(s.lr, g), denominator);
    params[row * dim + d] = __fsub_rn(params[row * dim + d], __double2float_rn(step));
  }
}

__global__ void EmaKernel(float* __restrict__ ema, const float* __restrict__ params, int64_t n,
                          float blend, const float* guard) {
  if (guard != nullptr && *guard == 0.0f) return;
  TESSERA_CUDA_FOR(i, n) { ema[i] += blend * (params[i] - ema[i]); }
}

__global__ void CounterDropoutMaskKernel(const int64_t* __restrict__ row_keys, int64_t rows,
                                         int64_t width, uint64_t key, float rate, float keep,
                                         float* __restrict__ mask) {
  TESSERA_CUDA_FOR(i, rows * width) {
    const uint64_t counter =
        static_cast<uint64_t>(row_keys[i / width]) * static_cast<uint64_t>(width) + i % width;
    mask[i] = CounterUniform(key, counter) < rate ? 0.0f : keep;
  }
}

}  // namespace

absl::Status CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width, uint64_t key,
                                float rate, float* mask, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("CounterDropoutMask", rows, width));
  return LaunchFlat("CounterDropoutMask", rows * width, stream, CounterDropoutMaskKernel, row_keys,
                    rows, width, key, rate, 1.0f / (1.0f - rate), mask);
}

absl::Status Scale(float* x, int64_t n, float scale, cudaStream_t stream) {
  return LaunchFlat("Scale", n, stream, ScaleKernel, x, n, scale);
}

absl::Status SumSquares(const float* x, int64_t n, double* partials, double* result,
                        cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SumSquares", n));
  SumSquaresPartialKernel<<<kSumSquaresBlocks, kReduceThreads, 0, stream>>>(x, n, partials);
  TESSERA_CUDA_LAUNCH();
  SumPartialsKernel<<<1, kReduceThreads, 0, stream>>>(partials, kSumSquaresBlocks, result);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status AccumulateScalars(const double* x, int64_t n, double weight, double* acc,
                               cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("AccumulateScalars", n));
  AccumulateScalarsKernel<<<1, 1, 0, stream>>>(x, n, weight, acc);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status StepGuard(const double* norm_squared, double max_norm, int64_t step,
                       double* diverged_step, float* scale, cudaStream_t stream) {
  StepGuardKernel<<<1, 1, 0, stream>>>(norm_squared, max_norm, step, diverged_step, scale);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status GatherElements(const float* in, const int32_t* index, float* out, int64_t n,
                            cudaStream_t stream) {
  return LaunchFlat("GatherElements", n, stream, GatherKernel, in, index, out, n);
}

absl::Status ScatterElements(const float* in, const int32_t* index, float* out, int64_t n,
                             cudaStream_t stream) {
  return LaunchFlat("ScatterElements", n, stream, ScatterKernel, in, index, out, n);
}

absl::Status AdamWUpdateRange(const AdamWScalars& scalars, int64_t begin, int64_t end, bool decay,
                              float* params, const float* grads, float* m, float* v,
                              const float* grad_scale, cudaStream_t stream) {
  const float keep = decay ? scalars.decay_keep : 1.0f;
  return LaunchFlat("AdamWUpdate", end - begin, stream, AdamWKernel, scalars, keep,
                    params + begin, grads + begin, m + begin, v + begin, end - begin, grad_scale);
}

absl::Status SparseRowUpdate(const SparseRowScalars& s, const int32_t* rows, int64_t count,
                             int64_t dim, const float* grads, float* params, float* m, float* v,
                             float* sums, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SparseRowUpdate", count, dim));
  if (count == 0 || dim == 0) return absl::OkStatus();
  if (s.adam) {
    return LaunchFlat("SparseRowUpdate", count * dim, stream, SparseAdamKernel, s, rows, count,
                      dim, grads, params, m, v);
  }
  if (count >= INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::SparseRowUpdate: %d rows is too many for one launch", count));
  }
  SparseAdagradKernel<<<static_cast<unsigned>(count), kAdagradThreads, 0, stream>>>(
      s, rows, dim, grads, params, sums);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status EmaUpdate(float* ema, const float* params, int64_t n, float blend,
                       const float* guard, cudaStream_t stream) {
  return LaunchFlat("EmaUpdate", n, stream, EmaKernel, ema, params, n, blend, guard);
}

}  // namespace tessera::cuda
