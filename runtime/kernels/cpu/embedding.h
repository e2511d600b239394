// Embedding lookup: out[i, :] = table[ids[i], :]. Ids must be in [0, rows).
#pragma once

#include <cstdint>

namespace tessera::cpu {

void EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                      int64_t dim);
// dtable[ids[i], :] += dout[i, :]
void EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                       int64_t dim);

}  // namespace tessera::cpu
