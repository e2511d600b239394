// Embedding lookup: out[i, :] = table[ids[i], :]. Ids must be in [0, rows).
#pragma once

#include <cstdint>

namespace tessera::cpu {

void EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                      int64_t dim);
// dtable[ids[i], :] += dout[i, :]
void EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                       int64_t dim);

// Scores of queries against gathered rows, without gathering them (HSTU's
// sampled softmax: each token against its own candidates, the rows being
// the distinct items of a batch):
//   out[t, c] = alpha * q[t] . rows[slots[t * per_token + c]] + beta * out[t, c]
// for t < tokens, c < per_token; q [tokens, dim], rows [*, dim].
void GatherDotForward(const float* q, const float* rows, const int32_t* slots, int64_t tokens,
                      int64_t per_token, int64_t dim, float alpha, float beta, float* out);
// Its backward for dout [tokens, per_token]: dq[t] = alpha sum_c dout[t, c]
// rows[slot] (overwritten); drows[slot] += alpha dout[t, c] q[t]
// (accumulated, in (t, c) order: deterministic).
void GatherDotBackward(const float* q, const float* rows, const int32_t* slots, int64_t tokens,
                       int64_t per_token, int64_t dim, float alpha, const float* dout, float* dq,
                       float* drows);

}  // namespace tessera::cpu
