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

// out[i] = in[index[i]]
void GatherElements(const float* in, const int32_t* index, float* out, int64_t n);
// out[index[i]] = in[i]
void ScatterElements(const float* in, const int32_t* index, float* out, int64_t n);

}  // namespace tessera::cpu
