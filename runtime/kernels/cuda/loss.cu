// Losses: one warp per row for the softmax, double partial sums reduced in a
// fixed order for the mean.
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/loss.h"

namespace tessera::cuda {
namespace {

using internal::BlockSum;
using internal::kRowsPerBlock;
using internal::kWarpSize;
using internal::LaunchFlat;
using internal::WarpMax;
using internal::WarpSum;

constexpr int kThreads = 256;

__global__ void SquaredErrorPartialKernel(const float* __restrict__ pred,
                                          const float* __restrict__ target, int64_t n,
                                          double* partials) {
  __shared__ double scratch[32];
  double sum = 0;
  TESSERA_CUDA_FOR(i, n) {
    const double d = static_cast<double>(pred[i]) - target[i];
    sum += d * d;
  }
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *result = sum(values[0, count)) / divisor, in a fixed order.
__global__ void MeanKernel(const double* values, int64_t count, double divisor, double* result) {
  __shared__ double scratch[32];
  double sum = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += values[i];
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) *result = divisor > 0 ? sum / divisor : 0.0;
}

__global__ void MseBackwardKernel(const float* __restrict__ pred, const float* __restrict__ target,
                                  float* __restrict__ dpred, int64_t n, float factor) {
  TESSERA_CUDA_FOR(i, n) { dpred[i] = factor * (pred[i] - target[i]); }
}

// One warp per row: probs = softmax(logits), row_loss = lse - logits[target].
__global__ void CrossEntropyRowKernel(const float* __restrict__ logits,
                                      const int32_t* __restrict__ targets,
                                      float* __restrict__ probs, int64_t rows, int64_t classes,
                                      double* row_loss) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const float* xr = logits + row * classes;
  float* pr = probs + row * classes;
  float max_value = -INFINITY;
  for (int64_t j = lane; j < classes; j += kWarpSize) max_value = fmaxf(max_value, xr[j]);
  max_value = WarpMax(max_value);
  float sum = 0.0f;
  for (int64_t j = lane; j < classes; j += kWarpSize) sum += expf(xr[j] - max_value);
  sum = WarpSum(sum);
  const float inv_sum = 1.0f / sum;
  for (int64_t j = lane; j < classes; j += kWarpSize) pr[j] = expf(xr[j] - max_value) * inv_sum;
  if (lane == 0) {
    const int32_t t = targets[row];
    const float lse = max_value + logf(sum);
    row_loss[row] = (t >= 0 && t < classes) ? static_cast<double>(lse) - xr[t] : NAN;
  }
}

__global__ void CrossEntropyBackwardKernel(const float* __restrict__ probs,
                                           const int32_t* __restrict__ targets,
                                           float* __restrict__ dlogits, int64_t rows,
                                           int64_t classes, float factor) {
  TESSERA_CUDA_FOR(i, rows * classes) {
    const int64_t r = i / classes, c = i % classes;
    dlogits[i] = factor * (probs[i] - (targets[r] == c ? 1.0f : 0.0f));
  }
}

__device__ __forceinline__ double WarpSumDouble(double value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// One warp per row: [max, sum exp(x - max), target logit, global argmax].
// Each lane walks its columns in increasing order keeping its first
// maximum; lanes then combine (larger value, or the lower column on a tie),
// so the argmax is the row's first maximum, as on the CPU.
__global__ void VocabStatsKernel(const float* __restrict__ logits,
                                 const int32_t* __restrict__ targets, int64_t rows,
                                 int64_t columns, int64_t column_offset, double* stats) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const float* xr = logits + row * columns;
  float max_value = -INFINITY;
  int64_t argmax = columns;  // none yet
  for (int64_t j = lane; j < columns; j += kWarpSize) {
    if (xr[j] > max_value) {
      max_value = xr[j];
      argmax = j;
    }
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, max_value, offset);
    const int64_t other_index = __shfl_xor_sync(0xffffffffu, argmax, offset);
    if (other > max_value || (other == max_value && other_index < argmax)) {
      max_value = other;
      argmax = other_index;
    }
  }
  const double max = max_value;
  double sum = 0;
  for (int64_t j = lane; j < columns; j += kWarpSize) sum += exp(static_cast<double>(xr[j]) - max);
  sum = WarpSumDouble(sum);
  if (lane == 0) {
    const int64_t local = targets[row] - column_offset;
    double* out = stats + row * 4;
    out[0] = max;
    out[1] = sum;
    out[2] = local >= 0 && local < columns ? static_cast<double>(xr[local]) : 0.0;
    out[3] = static_cast<double>(column_offset + (argmax < columns ? argmax : 0));
  }
}

// One warp per row: every lane combines the ranks' statistics (a few
// numbers each), then the lanes write the row's softmax columns; lane 0
// keeps the row's loss and hit for the fixed-order sum.
__global__ void VocabCombineKernel(const float* __restrict__ logits,
                                   const double* __restrict__ all_stats, int64_t ranks,
                                   const int32_t* __restrict__ targets, float* __restrict__ probs,
                                   int64_t rows, int64_t columns, double* row_loss,
                                   double* row_hit) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  double max = -INFINITY, argmax = -1;
  for (int64_t k = 0; k < ranks; ++k) {
    const double* s = all_stats + (k * rows + row) * 4;
    if (s[0] > max) {
      max = s[0];
      argmax = s[3];
    }
  }
  double sum = 0, target = 0;
  for (int64_t k = 0; k < ranks; ++k) {
    const double* s = all_stats + (k * rows + row) * 4;
    sum += s[1] * exp(s[0] - max);
    target += s[2];
  }
  const double log_sum = log(sum) + max;
  const float* xr = logits + row * columns;
  float* pr = probs + row * columns;
  for (int64_t j = lane; j < columns; j += kWarpSize) {
    pr[j] = static_cast<float>(exp(static_cast<double>(xr[j]) - log_sum));
  }
  if (lane == 0) {
    row_loss[row] = log_sum - target;
    row_hit[row] = argmax == static_cast<double>(targets[row]) ? 1.0 : 0.0;
  }
}

// totals[0] = sum of row_loss, totals[1] = sum of row_hit; one block, a fixed order.
__global__ void RowTotalsKernel(const double* row_loss, const double* row_hit, int64_t rows,
                                double* totals) {
  __shared__ double scratch[32];
  double loss = 0, hits = 0;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
    loss += row_loss[i];
    hits += row_hit[i];
  }
  loss = BlockSum(loss, scratch);
  hits = BlockSum(hits, scratch);
  if (threadIdx.x == 0) {
    totals[0] = loss;
    totals[1] = hits;
  }
}

__global__ void VocabBackwardKernel(const float* __restrict__ probs,
                                    const int32_t* __restrict__ targets,
                                    float* __restrict__ dlogits, int64_t rows, int64_t columns,
                                    int64_t column_offset, float scale) {
  TESSERA_CUDA_FOR(i, rows * columns) {
    const int64_t r = i / columns, c = i % columns;
    const bool target = int64_t{targets[r]} - column_offset == c;
    dlogits[i] = target ? scale * (probs[i] - 1.0f) : scale * probs[i];
  }
}

__global__ void EmbeddingForwardKernel(const int32_t* __restrict__ ids,
                                       const float* __restrict__ table, float* __restrict__ out,
                                       int64_t n, int64_t dim) {
  TESSERA_CUDA_FOR(i, n * dim) { out[i] = table[int64_t{ids[i / dim]} * dim + i % dim]; }
}

__global__ void EmbeddingBackwardKernel(const int32_t* __restrict__ ids,
                                        const float* __restrict__ dout, float* dtable, int64_t n,
                                        int64_t dim) {
  TESSERA_CUDA_FOR(i, n * dim) { atomicAdd(dtable + int64_t{ids[i / dim]} * dim + i % dim, dout[i]); }
}

// One warp per (token, candidate): the dot product over dim.
__global__ void GatherDotForwardKernel(const float* __restrict__ q, const float* __restrict__ rows,
                                       const int32_t* __restrict__ slots, int64_t pairs,
                                       int64_t per_token, int64_t dim, float alpha, float beta,
                                       float* __restrict__ out) {
  const int64_t pair = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (pair >= pairs) return;
  const float* qt = q + (pair / per_token) * dim;
  const float* row = rows + int64_t{slots[pair]} * dim;
  float dot = 0.0f;
  for (int64_t d = lane; d < dim; d += kWarpSize) dot += qt[d] * row[d];
  dot = WarpSum(dot);
  if (lane == 0) out[pair] = alpha * dot + (beta == 0.0f ? 0.0f : beta * out[pair]);
}

// One warp per token: dq[t] = alpha sum_c dout[t, c] rows[slot] (overwritten).
__global__ void GatherDotQueryGradKernel(const float* __restrict__ rows,
                                         const int32_t* __restrict__ slots, int64_t tokens,
                                         int64_t per_token, int64_t dim, float alpha,
                                         const float* __restrict__ dout, float* __restrict__ dq) {
  const int64_t t = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (t >= tokens) return;
  for (int64_t d = lane; d < dim; d += kWarpSize) {
    float sum = 0.0f;
    for (int64_t c = 0; c < per_token; ++c) {
      sum += dout[t * per_token + c] * rows[int64_t{slots[t * per_token + c]} * dim + d];
    }
    dq[t * dim + d] = alpha * sum;
  }
}

// drows[slot] += alpha dout[t, c] q[t]: one thread per element, atomic adds
// (rows repeat across tokens; the order of the adds is not fixed).
__global__ void GatherDotRowGradKernel(const float* __restrict__ q,
                                       const int32_t* __restrict__ slots, int64_t pairs,
                                       int64_t per_token, int64_t dim, float alpha,
                                       const float* __restrict__ dout, float* drows) {
  TESSERA_CUDA_FOR(i, pairs * dim) {
    const int64_t pair = i / dim, d = i % dim;
    atomicAdd(drows + int64_t{slots[pair]} * dim + d,
              alpha * dout[pair] * q[(pair / per_token) * dim + d]);
  }
}

}  // namespace

absl::Status GatherDotForward(const float* q, const float* rows, const int32_t* slots,
                              int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                              float beta, float* out, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("GatherDotForward", tokens, per_token));
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("GatherDotForward", dim));
  const int64_t pairs = tokens * per_token;
  if (pairs == 0) return absl::OkStatus();
  GatherDotForwardKernel<<<internal::RowBlocks(pairs), kRowsPerBlock * kWarpSize, 0, stream>>>(
      q, rows, slots, pairs, per_token, dim, alpha, beta, out);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status GatherDotBackward(const float* q, const float* rows, const int32_t* slots,
                               int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                               const float* dout, float* dq, float* drows, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("GatherDotBackward", tokens, per_token));
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("GatherDotBackward", dim));
  if (tokens == 0 || dim == 0) return absl::OkStatus();
  GatherDotQueryGradKernel<<<internal::RowBlocks(tokens), kRowsPerBlock * kWarpSize, 0,
                             stream>>>(rows, slots, tokens, per_token, dim, alpha, dout, dq);
  TESSERA_CUDA_LAUNCH();
  if (per_token == 0) return absl::OkStatus();
  return LaunchFlat("GatherDotBackward", tokens * per_token * dim, stream, GatherDotRowGradKernel,
                    q, slots, tokens * per_token, per_token, dim, alpha, dout, drows);
}

absl::Status MseForward(const float* pred, const float* target, int64_t n, double* scratch,
                        double* result, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MseForward", n));
  SquaredErrorPartialKernel<<<kLossPartials, kThreads, 0, stream>>>(pred, target, n, scratch);
  TESSERA_CUDA_LAUNCH();
  MeanKernel<<<1, kThreads, 0, stream>>>(scratch, kLossPartials, static_cast<double>(n), result);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status MseBackward(const float* pred, const float* target, float* dpred, int64_t n,
                         float scale, cudaStream_t stream) {
  if (n <= 0) return internal::CheckNonNegative("MseBackward", n);
  const float factor = static_cast<float>(2.0 * scale / static_cast<double>(n));
  return LaunchFlat("MseBackward", n, stream, MseBackwardKernel, pred, target, dpred, n, factor);
}

absl::Status CrossEntropyForward(const float* logits, const int32_t* targets, float* probs,
                                 int64_t rows, int64_t classes, double* scratch, double* result,
                                 cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("CrossEntropyForward", rows, classes));
  if (rows > 0 && classes > 0) {
    CrossEntropyRowKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
        logits, targets, probs, rows, classes, scratch);
    TESSERA_CUDA_LAUNCH();
  }
  MeanKernel<<<1, kThreads, 0, stream>>>(scratch, classes > 0 ? rows : 0, static_cast<double>(rows),
                                         result);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                  int64_t rows, int64_t classes, float scale,
                                  cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("CrossEntropyBackward", rows, classes));
  if (rows == 0) return absl::OkStatus();
  const float factor = static_cast<float>(scale / static_cast<double>(rows));
  return LaunchFlat("CrossEntropyBackward", rows * classes, stream, CrossEntropyBackwardKernel,
                    probs, targets, dlogits, rows, classes, factor);
}

absl::Status EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                              int64_t dim, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("EmbeddingForward", n, dim));
  return LaunchFlat("EmbeddingForward", n * dim, stream, EmbeddingForwardKernel, ids, table, out,
                    n, dim);
}

absl::Status EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                               int64_t dim, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("EmbeddingBackward", n, dim));
  return LaunchFlat("EmbeddingBackward", n * dim, stream, EmbeddingBackwardKernel, ids, dout,
                    dtable, n, dim);
}

absl::Status VocabCrossEntropyStats(const float* logits, const int32_t* targets, int64_t rows,
                                    int64_t columns, int64_t column_offset, double* stats,
                                    cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("VocabCrossEntropyStats", rows, columns));
  if (rows == 0) return absl::OkStatus();
  if (columns == 0) {
    return absl::InvalidArgumentError("cuda::VocabCrossEntropyStats: a row of 0 columns");
  }
  VocabStatsKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      logits, targets, rows, columns, column_offset, stats);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status VocabCrossEntropyCombine(const float* logits, const double* all_stats,
                                      int64_t ranks, const int32_t* targets, float* probs,
                                      int64_t rows, int64_t columns, double* scratch,
                                      double* totals, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("VocabCrossEntropyCombine", rows, columns));
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("VocabCrossEntropyCombine", ranks));
  if (rows > 0) {
    VocabCombineKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
        logits, all_stats, ranks, targets, probs, rows, columns, scratch, scratch + rows);
    TESSERA_CUDA_LAUNCH();
  }
  RowTotalsKernel<<<1, kThreads, 0, stream>>>(scratch, scratch + rows, rows, totals);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status VocabCrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                       int64_t rows, int64_t columns, int64_t column_offset,
                                       float scale, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("VocabCrossEntropyBackward", rows, columns));
  return LaunchFlat("VocabCrossEntropyBackward", rows * columns, stream, VocabBackwardKernel,
                    probs, targets, dlogits, rows, columns, column_offset, scale);
}

}  // namespace tessera::cuda
