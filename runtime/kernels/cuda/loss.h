// Losses and the embedding lookup on the GPU; the semantics of
// runtime/kernels/cpu/loss.h and embedding.h. A forward's mean loss is
// written as one double to device memory (`result`), for the caller to copy
// out when it needs the value; `scratch` is device memory for partial sums.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

// Doubles of `scratch` the forwards below need for `rows` rows (MSE: n).
inline constexpr int kLossPartials = 256;

// *result = mean((pred - target)^2); scratch: kLossPartials doubles.
absl::Status MseForward(const float* pred, const float* target, int64_t n, double* scratch,
                        double* result, cudaStream_t stream);
// dpred = scale * 2 (pred - target) / n
absl::Status MseBackward(const float* pred, const float* target, float* dpred, int64_t n,
                         float scale, cudaStream_t stream);

// probs [rows, classes] = softmax(logits); *result = mean_r (lse_r - logits[r, t_r]).
// A target outside [0, classes) makes the loss NaN. scratch: `rows` doubles.
absl::Status CrossEntropyForward(const float* logits, const int32_t* targets, float* probs,
                                 int64_t rows, int64_t classes, double* scratch, double* result,
                                 cudaStream_t stream);
// dlogits = scale * (probs - onehot(targets)) / rows
absl::Status CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                  int64_t rows, int64_t classes, float scale, cudaStream_t stream);

// The vocabulary-parallel cross-entropy's pieces (cpu/loss.h). Stats: one
// warp per row, the maximum's first occurrence and the sum of exponentials
// in double. Combine: one warp per row for the softmax columns; `scratch`
// (2 * rows doubles) holds each row's loss and hit, summed in a fixed order
// into totals[0], totals[1] (device memory).
absl::Status VocabCrossEntropyStats(const float* logits, const int32_t* targets, int64_t rows,
                                    int64_t columns, int64_t column_offset, double* stats,
                                    cudaStream_t stream);
absl::Status VocabCrossEntropyCombine(const float* logits, const double* all_stats,
                                      int64_t ranks, const int32_t* targets, float* probs,
                                      int64_t rows, int64_t columns, double* scratch,
                                      double* totals, cudaStream_t stream);
absl::Status VocabCrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                       int64_t rows, int64_t columns, int64_t column_offset,
                                       float scale, cudaStream_t stream);

// out[i, :] = table[ids[i], :]
absl::Status EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                              int64_t dim, cudaStream_t stream);
// dtable[ids[i], :] += dout[i, :] (atomic adds: repeated ids sum in any order)
absl::Status EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                               int64_t dim, cudaStream_t stream);

// runtime/kernels/cpu/embedding.h's GatherDot: out[t, c] = alpha q[t] .
// rows[slots[t per_token + c]] + beta out[t, c] (one warp per pair); the
// backward overwrites dq (one warp per token) and adds into drows (atomic
// adds: repeated rows sum in any order).
absl::Status GatherDotForward(const float* q, const float* rows, const int32_t* slots,
                              int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                              float beta, float* out, cudaStream_t stream);
absl::Status GatherDotBackward(const float* q, const float* rows, const int32_t* slots,
                               int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                               const float* dout, float* dq, float* drows, cudaStream_t stream);

}  // namespace tessera::cuda
