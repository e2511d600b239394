// Loops over flat buffers: scaling, the sum of squares behind the gradient
// norm, and element gathers/scatters by an index map.
#pragma once

#include <cstdint>

namespace tessera::cpu {

// x[i] *= scale
void Scale(float* x, int64_t n, float scale);

// Sum of x[i]^2 in double. Deterministic: the same bits for the same input
// whatever the thread count (fixed blocks, summed in a fixed order).
double SumSquares(const float* x, int64_t n);

// *acc += weight * x[i], i in order.
void AccumulateScalars(const double* x, int64_t n, double weight, double* acc);

// out[i] = in[index[i]]
void GatherElements(const float* in, const int32_t* index, float* out, int64_t n);
// out[index[i]] = in[i]
void ScatterElements(const float* in, const int32_t* index, float* out, int64_t n);

// A counter-based dropout mask [rows, width]: element (r, d) is 0 when
// CounterUniform(key, row_keys[r] * width + d) < rate, else 1 / (1 - rate),
// so any shard of the rows draws what the whole would (runtime/base/random.h).
void CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width, uint64_t key,
                        float rate, float* mask);

}  // namespace tessera::cpu
