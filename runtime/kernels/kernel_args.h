// Argument records shared by the kernels of every device and the Backend
// interface (runtime/backend/backend.h).
#pragma once

#include <cstdint>

namespace tessera {

// Multi-head attention geometry, token-major: Q, K, V hold for each (batch b,
// position s) a row of heads*head_dim values, head h at columns
// [h*head_dim, (h+1)*head_dim); consecutive tokens are `row_stride` floats
// apart (so Q, K, V may point into one fused [B, S, 3, H, Dh] projection).
struct AttentionShape {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t row_stride = 0;  // of q, k, v (and dq, dk, dv)
  bool causal = false;     // query i attends to keys j <= i
};

// One GEMM of a grouped call (Backend::GemmGrouped): Gemm's row-major
// contract with sizes and operands of its own. The operands live in the
// backend's memory; the descriptors themselves are host values.
struct GemmProblem {
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  float* c = nullptr;
  int64_t ldc = 0;
  // bf16 copies of A and B (same leading dimension, GemmOperand), or null: used in a bf16 run.
  const uint16_t* a16 = nullptr;
  const uint16_t* b16 = nullptr;
};

// One contiguous range [begin, end) of the flat optimizer buffers and
// whether decoupled weight decay applies to it.
struct AdamWSegment {
  int64_t begin = 0, end = 0;
  bool decay = false;
};

// The scalars of one AdamW step, computed in double by the optimizer and
// rounded once, so the per-element loop is the same on every backend.
struct AdamWScalars {
  float beta1 = 0, beta2 = 0, one_minus_beta1 = 0, one_minus_beta2 = 0;
  float step_size = 0;       // lr / (1 - beta1^t)
  float inv_sqrt_bias2 = 0;  // 1 / sqrt(1 - beta2^t)
  float eps = 0;
  float decay_keep = 1;  // 1 - lr * weight_decay, for decayed segments
};

// One step of a row-sharded table's sparse optimizer
// (parallel/embedding/row_sharded_table.h) over the rows a step touched.
// Unlike AdamW's, its arithmetic is double, rounded to float where the
// table's values are stored: the formula every backend follows, so a table
// on any device makes the host table's updates bit for bit.
struct SparseRowScalars {
  bool adam = true;  // else row-wise Adagrad (one accumulator per row)
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0;
  double bias1 = 1, bias2 = 1;  // Adam's 1 - beta1^t and 1 - beta2^t
  float grad_scale = 1;         // each gradient is multiplied by it first (in float)
};


// Geometry of one SSD scan. `chunk` only changes the order of the arithmetic
// (and the cost), never the result beyond rounding.
struct SsdShape {
  int64_t batch = 0;
  int64_t seq = 0;        // L (the one-token step ignores it)
  int64_t heads = 0;      // H
  int64_t head_dim = 0;   // P
  int64_t groups = 0;     // G, heads % groups == 0 (heads of a group share B, C)
  int64_t state_dim = 0;  // N
  int64_t chunk = 64;     // Q
};

struct CausalConv1dShape {
  int64_t batch = 0;
  int64_t seq = 0;       // L (the one-token step ignores it)
  int64_t channels = 0;  // C
  int64_t width = 4;     // K >= 1
};

}  // namespace tessera
